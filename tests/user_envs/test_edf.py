"""The EDF model: CSCS's format and semantics (inheritance, merge, expansion, search, mounts, annotations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from user_envs.edf import EdfError, Mount, parse_mount
from user_envs.resolve import MAX_DEPTH, resolve

# The canonical ML EDF of the CSCS docs (a registry image, a scratch mount, the NCCL hook with its variant).
CSCS_ML = """\
image = "nvcr.io#nvidia/pytorch:24.01-py3"
mounts = ["/capstor/scratch/cscs/${USER}:/capstor/scratch/cscs/${USER}"]
workdir = "/capstor/scratch/cscs/${USER}"

[annotations]
com.hooks.aws_ofi_nccl.enabled = "true"
com.hooks.aws_ofi_nccl.variant = "cuda12"
"""


@pytest.fixture
def edfs(tmp_path):
    d = tmp_path / "edf"
    d.mkdir()

    def write(name: str, text: str) -> Path:
        p = d / f"{name}.toml"
        p.write_text(text)
        return p
    write.dir = d
    return write


def env_for(edfs, **extra):
    return {"EDF_PATH": str(edfs.dir), "USER": "alice", "HOME": "/nonexistent", **extra}


def test_canonical_cscs_ml_edf_resolves(edfs):
    edfs("pytorch", CSCS_ML)
    r = resolve("pytorch", env_for(edfs))
    assert r.image == "nvcr.io#nvidia/pytorch:24.01-py3"
    assert r.mounts == (Mount("/capstor/scratch/cscs/alice", "/capstor/scratch/cscs/alice"),)
    assert r.workdir == "/capstor/scratch/cscs/alice"
    assert r.annotations == {"com.hooks.aws_ofi_nccl.enabled": "true", "com.hooks.aws_ofi_nccl.variant": "cuda12"}
    assert r.hook_enabled("aws_ofi_nccl") and not r.hook_enabled("cxi")
    assert r.writable is True and r.entrypoint is False  # the defaults


def test_dotted_annotation_keys_equal_nested_tables(edfs):
    edfs("a", '[annotations]\ncom.hooks.cxi.enabled = "true"\n')
    edfs("b", '[annotations.com.hooks.cxi]\nenabled = "true"\n')
    edfs("c", '[annotations]\n"com.hooks.cxi.enabled" = "true"\n')
    got = {n: resolve(n, env_for(edfs)).annotations for n in "abc"}
    assert got["a"] == got["b"] == got["c"] == {"com.hooks.cxi.enabled": "true"}


def test_bases_merge_in_order(edfs):
    edfs("base1", 'image = "/img/one.sqsh"\nworkdir = "/w1"\nmounts = ["/a:/a"]\n'
                  '[env]\nX = "1"\nY = "1"\n[annotations]\nk = "1"\n')
    edfs("base2", 'image = "/img/two.sqsh"\nmounts = ["/b:/b:ro"]\nwritable = false\n[env]\nY = "2"\nZ = "2"\n')
    edfs("top", 'base_environment = ["base1", "base2"]\nmounts = ["/c:/c"]\n[env]\nZ = "3"\n')
    r = resolve("top", env_for(edfs))
    assert r.image == "/img/two.sqsh"          # later base wins
    assert r.workdir == "/w1"                   # unset later: the earlier value stays
    assert r.writable is False
    assert [m.dst for m in r.mounts] == ["/a", "/b", "/c"]  # mounts append in order
    assert r.env == {"X": "1", "Y": "2", "Z": "3"}
    assert r.annotations == {"k": "1"}
    assert [p.stem for p in r.chain] == ["base1", "base2", "top"]


def test_base_environment_may_be_a_string_or_a_path(edfs):
    edfs("base", 'image = "/img/x.sqsh"\n')
    edfs("one", 'base_environment = "base"\n')
    edfs("two", f'base_environment = "{edfs.dir}/base.toml"\n')
    assert resolve("one", env_for(edfs)).image == resolve("two", env_for(edfs)).image == "/img/x.sqsh"


def test_ten_levels_resolve_and_the_eleventh_is_refused(edfs):
    edfs("l1", 'image = ""\n')
    for i in range(2, MAX_DEPTH + 2):
        edfs(f"l{i}", f'base_environment = "l{i - 1}"\n')
    assert resolve(f"l{MAX_DEPTH}", env_for(edfs)).image == ""
    with pytest.raises(EdfError) as e:
        resolve(f"l{MAX_DEPTH + 1}", env_for(edfs))
    msg = str(e.value)
    assert "more than 10 levels" in msg and "l11.toml -> " in msg and msg.count(" -> ") == MAX_DEPTH


def test_cycle_is_an_error_showing_the_chain(edfs):
    edfs("a", 'base_environment = "b"\n')
    edfs("b", 'base_environment = "a"\n')
    with pytest.raises(EdfError, match=r"inheritance cycle: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        resolve("a", env_for(edfs))


def test_variables_expand_everywhere_with_defaults_and_escapes(edfs):
    edfs("v", 'image = "${IMGDIR}/x.sqsh"\nworkdir = "/home/${USER}"\n'
              '[env]\nA = "${MISSING:-}"\nB = "$$HOME"\nC = "${USER}-$${USER}"\n[annotations]\nk = "${USER}"\n')
    r = resolve("v", env_for(edfs, IMGDIR="/images"))
    assert r.image == "/images/x.sqsh" and r.workdir == "/home/alice"
    assert r.env == {"A": "", "B": "$HOME", "C": "alice-${USER}"}
    assert r.annotations == {"k": "alice"}


def test_undefined_variable_names_file_key_and_fix(edfs):
    p = edfs("v", 'mounts = ["${NOPE}:/x"]\n')
    with pytest.raises(EdfError) as e:
        resolve("v", env_for(edfs))
    assert str(p) in str(e.value) and "mounts" in str(e.value) and "export NOPE" in str(e.value)


def test_search_path_is_edf_path_then_home_edf(tmp_path, edfs):
    home = tmp_path / "home"
    (home / ".edf").mkdir(parents=True)
    (home / ".edf" / "mine.toml").write_text('image = "/from/home"\n')
    edfs("mine", 'image = "/from/edf_path"\n')
    assert resolve("mine", {"HOME": str(home), "EDF_PATH": str(edfs.dir)}).image == "/from/edf_path"
    assert resolve("mine", {"HOME": str(home)}).image == "/from/home"
    with pytest.raises(EdfError, match="no environment 'other'.*set EDF_PATH"):
        resolve("other", {"HOME": str(home)})


@pytest.mark.parametrize("text,want", [
    ("/a:/b", Mount("/a", "/b")),
    ("/capstor", Mount("/capstor", "/capstor")),  # a bare path mounts it at the same path
    ("/a:/b:ro", Mount("/a", "/b", ("ro",))),
    ("/a:/b:ro+private", Mount("/a", "/b", ("ro", "private"))),
    ("/img.sqsh:/opt/x:sqsh", Mount("/img.sqsh", "/opt/x", ("sqsh",))),
])
def test_mount_syntax(text, want):
    assert parse_mount(text) == want


@pytest.mark.parametrize("text,why", [
    ("/a:/b:/c:ro", "SRC\\[:DST"), ("a:/b", "absolute"), ("/a:b", "absolute"),
    ("/a:/b:ro,private", "not .,.; write .ro\\+private."), ("/a:/b:nosiud", "did you mean .nosuid."),
    ("/a:/b:ro+rw", "contradict"),
])
def test_bad_mounts_are_refused_with_a_fix(edfs, text, why):
    edfs("m", f'mounts = ["{text}"]\n')
    with pytest.raises(EdfError, match=why) as e:
        resolve("m", env_for(edfs))
    assert "m.toml: mounts:" in str(e.value)


@pytest.mark.parametrize("text,why", [
    ('imgae = "x"\n', "unknown key; did you mean 'image'"),
    ('writable = "yes"\n', "writable"),
    ('[env]\nN = 3\n', 'quote it: N = "3"'),
    ('[annotations]\nx = true\n', "not a string"),
    ('image = \n', "not valid TOML"),
])
def test_bad_keys_name_file_key_and_fix(edfs, text, why):
    edfs("bad", text)
    with pytest.raises(EdfError, match=why) as e:
        resolve("bad", env_for(edfs))
    assert "bad.toml" in str(e.value)


def test_resolved_edf_prints_as_toml_that_resolves_to_itself(edfs):
    edfs("pytorch", CSCS_ML)
    r = resolve("pytorch", env_for(edfs))
    edfs("again", r.to_toml())
    again = resolve("again", env_for(edfs))
    assert (again.image, again.mounts, again.workdir, again.env, again.annotations) == \
        (r.image, r.mounts, r.workdir, r.env, r.annotations)
