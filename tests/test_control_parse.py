from __future__ import annotations

import pytest

from daemon.core.control import ControlError, parse, write_command
from daemon.core.home import Home


def test_empty_file_acts_on_running_job(tmp_path):
    (tmp_path / "pause").write_text("")
    cmd = parse(tmp_path / "pause")
    assert cmd.kind == "pause" and cmd.target is None


def test_run_id_on_first_line(tmp_path):
    (tmp_path / "stop").write_text("data-20260101-120000\n")
    assert parse(tmp_path / "stop").target == "data-20260101-120000"


def test_a_run_id_keeps_letters_of_any_script(tmp_path):
    (tmp_path / "stop").write_text("données-日本-20260101-120000\n")
    assert parse(tmp_path / "stop").target == "données-日本-20260101-120000"


def test_priority_lines(tmp_path):
    (tmp_path / "priority").write_text("# comment\nrun-a 10\nmydata -3\n")
    assert parse(tmp_path / "priority").priorities == [("run-a", 10), ("mydata", -3)]


@pytest.mark.parametrize("name, content, msg", [
    ("priority", "run-a ten\n", "line 1"),
    ("priority", "", "empty"),
    ("stop", "two words\n", "one run id"),
    ("stop", "a/b\n", "one run id"),
    ("stop", "run\x07id\n", "one run id"),
    ("launch", "", "unknown control file"),
    ("pause", b"\xff\xfe", "not UTF-8"),
    ("activate", "model\n", "NAME VERSION"),
])
def test_bad_control_files(tmp_path, name, content, msg):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ControlError, match=msg):
        parse(p)


def test_write_command_is_what_the_parser_reads_under_a_name_of_its_own(tmp_path):
    h = Home.resolve(tmp_path)
    first, second = write_command(h, "priority", "run-a 5"), write_command(h, "priority", "run-b 6")
    assert first != second and first.name.startswith("priority.")
    cmd = parse(first)
    assert (cmd.kind, cmd.priorities, cmd.id, cmd.held) == ("priority", [("run-a", 5)], first.name[9:], False)
    assert parse(second).priorities == [("run-b", 6)]
    assert not list(h.control.glob(".*.tmp"))


def test_a_hand_written_pause_may_name_several_runs_and_a_stop_only_one(tmp_path):
    (tmp_path / "pause").write_text("a-1\nb-1\n")
    assert parse(tmp_path / "pause").targets == ["a-1", "b-1"]
    (tmp_path / "stop").write_text("a-1\nb-1\n")
    with pytest.raises(ControlError, match="one run id on the first line"):
        parse(tmp_path / "stop")


def test_a_control_file_is_read_only_once_its_writer_is_done(tmp_path) -> None:
    import os
    import time

    from daemon.core.control import SETTLE_S, settled

    path = tmp_path / "stop"
    path.write_text("")  # what `echo RUN > control/stop` leaves for a moment
    assert not settled(path)
    past = time.time() - SETTLE_S - 0.1
    os.utime(path, (past, past))
    assert settled(path)
    assert settled(tmp_path / "gone")


def test_a_hand_written_control_file_still_open_for_writing_is_not_complete(tmp_path) -> None:
    import os
    import time

    from daemon.core.control import Completeness

    complete = Completeness()
    path = tmp_path / "stop"
    with open(path, "w") as writer:  # `( sleep 2; echo RUN ) > control/stop`: empty, settled, still open
        past = time.time() - 5
        os.utime(path, (past, past))
        assert not complete(path)
        writer.write("q3\n")
    os.utime(path, (past, past))
    assert not complete(path)  # looked at again only RECHECK_S after it was found open: no scan every pass
    time.sleep(Completeness.RECHECK_S)
    assert complete(path)
