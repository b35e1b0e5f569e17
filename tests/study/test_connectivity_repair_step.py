"""A study's connectivity step passes ``repair: true`` on as ``--repair true``, only with ``align: weight_matching``."""

import pytest

from ensemble_lab.errors import ConfigError
from tests.study.test_spawn_spec import DE, _study


def test_the_connectivity_step_can_repair(tmp_path):
    runs = _study(tmp_path, {"de": {"config": DE}}, connectivity={"points": 7, "align": "weight_matching", "repair": True})
    assert runs[0].connectivity_args()[-6:] == ["--points", "7", "--align", "weight_matching", "--repair", "true"]
    plain = _study(tmp_path, {"de": {"config": DE}}, connectivity={"points": 7, "align": "weight_matching"})
    assert "--repair" not in plain[0].connectivity_args()  # the default adds nothing: shipped studies run as before


@pytest.mark.parametrize("step, says", [({"repair": True}, "add align: weight_matching"), ({"align": "weight_matching", "repair": "yes"}, "repair: true | false")])
def test_a_bad_repair_is_one_line(tmp_path, step, says):
    with pytest.raises(ConfigError, match=says) as info:
        _study(tmp_path, {"de": {"config": DE}}, connectivity=step)
    assert "\n" not in str(info.value)
