"""The CLI's promise: a known failure is one ``error: …`` line on stderr (bounded, no
traceback) and exit 2 for the user's mistake. Run through ``main()``, as the installed
``ha-serving`` script does; every case fails before any stack is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha_serving.cli._app import MAX_ERROR_CHARS, main


def _run(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["ha-serving", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("error: "), lines[0][:200]
    assert "Traceback" not in err
    assert len(lines[0]) <= MAX_ERROR_CHARS + len("error: ")
    return lines[0]


def test_a_spec_with_many_unknown_keys_gives_one_short_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: one line listing every problem, millions of characters long."""
    spec = tmp_path / "keys.yaml"
    spec.write_text("".join(f"unknown_key_{i}: {'v' * 300}\n" for i in range(3000)))
    code, _, err = _run(["deploy", str(spec), "--cluster", "a"], monkeypatch, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "and 2998 more" in line  # 3000 unknown keys + name, version, code missing
    assert line.count(";") == 5


@pytest.mark.parametrize("command", ["deploy", "update"])
def test_a_python_tag_gives_one_line_and_never_runs(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: PyYAML's four-line message with its position marker (^)."""
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    args = (
        ["deploy", str(bad), "--cluster", "a"]
        if command == "deploy"
        else ["update", "echo", "--config", str(bad), "--cluster", "a"]
    )
    code, _, err = _run(args, monkeypatch, capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "python/object/apply:os.system" in line
    assert "line 1, column 7" in line
    assert not marker.exists()


def test_an_error_that_looks_like_markup_is_printed_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a key like ``[/]`` in the spec made rich raise MarkupError: a traceback."""
    spec = tmp_path / "markup.yaml"
    spec.write_text("name: echo\nversion: v1\ncode: {dir: c, import_path: 'a:B'}\n'[/]': 1\n")
    code, _, err = _run(["deploy", str(spec), "--cluster", "a"], monkeypatch, capsys)
    assert code == 2
    assert "[/]: Extra inputs are not permitted" in _one_error_line(err)


def test_a_billion_laughs_config_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text('a: &a ["x","x"]\nb: [*a,*a]\n')
    code, _, err = _run(
        ["update", "echo", "--config", str(config), "--cluster", "a"], monkeypatch, capsys
    )
    assert code == 2
    assert "aliases" in _one_error_line(err)
