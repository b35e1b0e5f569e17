"""The printed results table: one row per set, '-' where a metric does not apply."""

from ensemble_lab.evaluation.results import format_table


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
