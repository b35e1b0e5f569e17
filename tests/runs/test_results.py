"""The printed results table: one row per set, '-' where a metric does not apply."""

from ensemble_lab.runs.results import format_table


def test_table_rows_values_and_blanks() -> None:
    sets = {
        "digits": {"role": "id", "acc": 0.96104, "nll": 0.1115, "mi": 0.0218},
        "photos": {"role": "ood", "acc": 0.0, "nll": 5.8159, "mi": 0.3743, "auroc_msp": 0.98371},
    }
    header, rule, id_row, ood_row = format_table(sets, columns=("acc", "nll", "mi", "auroc_msp")).splitlines()
    assert header.split() == ["set", "role", "acc", "nll", "mi", "auroc_msp"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert id_row.split() == ["digits", "id", "0.9610", "0.1115", "0.0218", "-"]
    # an ood set's labels are not the model's classes: its acc / nll are left out of the table
    assert ood_row.split() == ["photos", "ood", "-", "-", "0.3743", "0.9837"]
    assert len({len(line) for line in (header, id_row, ood_row)}) == 1


def test_an_averages_set_shows_its_averages_not_dashes() -> None:
    sets = {"cifar10c_mean": {"role": "shift", "corrupted": "cifar10c", "c_acc": 0.61, "c_nll": 1.25, "c_ece": 0.08, "averaged_sets": ["a", "b"]}}
    _, _, row = format_table(sets, columns=("acc", "nll", "ece", "mi")).splitlines()
    assert row.split() == ["cifar10c_mean", "shift", "0.6100", "1.2500", "0.0800", "-"]  # c_acc, c_nll, c_ece under acc, nll, ece


def test_atomic_writes_replace_whole_files_readable_by_others(tmp_path):
    import os

    from ensemble_lab.io import atomic_write_bytes

    old_mask = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "results.json"
        atomic_write_bytes(path, b"first")
        atomic_write_bytes(path, b"second")
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o644  # as any other file the run writes, not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left


def test_results_json_is_written_last_and_earlier_outputs_are_set_aside(tmp_path, monkeypatch):
    import json

    from ensemble_lab.runs import results as results_module

    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "old.png").write_bytes(b"png")
    (run / "predictions").mkdir()
    (run / "results.json").write_text('{"old": true}')
    assert results_module.set_aside_previous(run) == 1
    assert (run / "figures.prev-1" / "old.png").exists() and (run / "predictions.prev-1").is_dir()
    assert not (run / "figures").exists() and (run / "results.prev-1.json").read_text() == '{"old": true}'
    assert (run / "results.json").exists()  # replaced only when the new one is complete

    written = []
    real_write = results_module.atomic_write_bytes
    monkeypatch.setattr(results_module, "atomic_write_bytes", lambda path, data: (written.append(path.name), real_write(path, data)))
    results_module.write_results(run, {"method": "X", "sets": {"digits": {"role": "id", "acc": 0.5, "member_acc": [0.5]}}})
    assert written == ["results.csv", "results.json"]
    assert json.loads((run / "results.json").read_text())["sets"]["digits"]["acc"] == 0.5
    assert results_module.set_aside_previous(run) == 2 and results_module.set_aside_previous(tmp_path / "empty") is None
