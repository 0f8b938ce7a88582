"""What `strata train --wait` says a job did, and that Slurm's text reaches the terminal verbatim."""

from __future__ import annotations

from strata.train import summarize


def rows(steps, tps=lambda s: 100.0 * s):
    return [{"step": s, "loss": 10.0 - s / 10, "tokens_per_s": tps(s)} for s in steps]


def test_a_fresh_job_reports_its_steps_and_the_median_throughput():
    out = summarize(rows(range(1, 6)), after=0)
    assert out == "trained steps 1..5: loss 9.900 -> 9.500, median 300 tokens/s over 5 steps"


def test_a_resumed_job_reports_only_what_it_trained():
    out = summarize(rows(range(1, 31)), after=20)
    assert out.startswith("trained steps 21..30 (resumed at step 20): loss 7.900 -> 7.000, median 2,550 tokens/s")


def test_a_job_that_trained_nothing_says_so_and_how_to_go_on():
    out = summarize(rows(range(1, 21)), after=20)
    assert out.startswith("trained no step: the run was already at step 20")
    assert "--training.max_steps" in out and "--run-dir" in out


def test_slurm_text_is_printed_verbatim_not_as_emoji_or_markup(capsys):
    from iac.cli_common import console as iac_console
    from strata.train import console as train_console

    for c in (iac_console, train_console):
        c.print("NtasksPerN:B:S:C=0:0:*:* [red]x[/]", markup=False, highlight=False)
    assert capsys.readouterr().out.splitlines() == ["NtasksPerN:B:S:C=0:0:*:* [red]x[/]"] * 2
