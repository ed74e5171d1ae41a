"""par/progress.py: a tqdm bar on a terminal, a bounded number of plain lines in a log."""

import io

from par.progress import Progress, progress


class Log(io.StringIO):
    def isatty(self):
        return False


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_about_one_line_per_tenth():
    log = Log()
    with Progress(1000, "train raster-n1", file=log) as p:
        for step in range(1000):
            if step == 390:
                p.set_postfix(loss=f"{2.345678:.4f}", lr="1.00e-04")
            p.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("train raster-n1: 100/1000 (10%) ") and lines[0].endswith(" s")
    assert lines[3].startswith("train raster-n1: 400/1000 (40%) ") and lines[3].endswith(", loss=2.3457, lr=1.00e-04")
    assert lines[-1].startswith("train raster-n1: 1000/1000 (100%) ")


def test_log_lines_are_bounded_with_big_updates_time_and_resume():
    log = Log()
    with Progress(7, "tokenize", file=log) as p:  # updates of any size: one line per crossing, plus the end
        for n in (3, 3, 1):
            p.update(n)
    assert [ln.split(" ")[1] for ln in log.getvalue().splitlines()] == ["3/7", "6/7", "7/7"]

    log = Log()
    with Progress(10**6, "slow", file=log, every_seconds=0.0) as p:  # every update is "30 s later"
        for _ in range(5):
            p.update(1)
    assert len(log.getvalue().splitlines()) == 5

    log = Log()
    with Progress(200, "resumed", initial=100, file=log) as p:
        for _ in range(100):
            p.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("resumed: 120/200 (60%)")

    log = Log()
    with Progress(0, "nothing", file=log):
        pass
    assert log.getvalue() == ""


def test_disabled_prints_nothing_and_iterator_yields_everything():
    log = Log()
    assert list(progress(range(5), "off", enable=False, file=log)) == list(range(5)) and log.getvalue() == ""
    assert list(progress(["a", "b"], "on", file=log)) == ["a", "b"]
    assert log.getvalue().splitlines()[-1].startswith("on: 2/2 (100%)")


def test_terminal_gets_a_tqdm_bar():
    term = Terminal()
    with Progress(50, "bar", file=term) as p:
        p.set_postfix(loss="1.0")
        p.update(50)
    out = term.getvalue()
    assert "bar: 100%" in out and "50/50" in out and "loss=1.0" in out
