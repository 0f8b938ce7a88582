"""Config: precedence CLI > TOML > defaults, unknown keys rejected with "did you mean", exit code 2."""

import pytest

from workloads.trainer.config import CONFIG_DIR, ConfigError, TrainerConfig, load_config
from workloads.trainer.train import main


def test_cli_overrides_toml_which_overrides_defaults(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[training]\nmax_steps = 7\nseq_len = 256\n[checkpoint]\ninterval = "auto"\n')
    cfg = load_config(str(toml), ["--training.max_steps=9", "--data.paths", '["a", "b"]', "--job.name=x"])
    assert cfg.training.max_steps == 9  # CLI beats TOML
    assert cfg.training.seq_len == 256  # TOML beats default
    assert cfg.training.micro_batch_size == TrainerConfig().training.micro_batch_size  # default
    assert cfg.checkpoint.interval == "auto" and cfg.data.paths == ["a", "b"] and cfg.job.name == "x"


def test_unknown_toml_key_names_file_key_and_suggestion(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[training]\nmax_step = 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(toml))
    msg = str(err.value)
    assert str(toml) in msg and "'training.max_step'" in msg and "did you mean 'training.max_steps'?" in msg


def test_unknown_section_and_cli_option_get_suggestions():
    with pytest.raises(ConfigError, match=r"unknown option '--optimiser'; did you mean '--optimizer'\?"):
        load_config("tiny", ["--optimiser.lr=1e-3"])
    with pytest.raises(ConfigError, match=r"did you mean '--checkpoint.interval'\?"):
        load_config("tiny", ["--checkpoint.intervall=5"])


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"training.max_steps: .*integer"):
        load_config("tiny", ["--training.max_steps=many"])
    with pytest.raises(ConfigError, match="data.weights has 1 entries but data.paths has 0"):
        load_config("tiny", ["--data.weights=[1.0]"])


def test_main_exits_2_on_config_errors(capsys):
    assert main(["--config", "tiny", "--training.max_stepz=3"]) == 2
    assert "did you mean '--training.max_steps'?" in capsys.readouterr().err
    assert main(["--config", "tinyy"]) == 2
    assert "did you mean 'tiny'?" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.model.preset == name
    assert cfg.model_args().max_seq_len == cfg.training.seq_len


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)
    walk(TrainerConfig)
