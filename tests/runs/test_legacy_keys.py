"""Old option keys (before options belonged to their objects) translated in one place: flags, configs, records."""

import pytest

from ensemble_lab.errors import ConfigError
from ensemble_lab.runs.legacy_keys import translate_argv, translate_config, translate_flat, translate_model_args

MLP = "ensemble_lab.nn.MLPOptions"
RESNET = "ensemble_lab.nn.ResNet18Options"
WRN = "ensemble_lab.nn.WideResNetOptions"
#: what every model recorded before the change (config.yaml and checkpoint hyper-parameters), main at 9fa6435
OLD_DEFAULTS = {
    "teacher": None, "distill_temperature": 4.0, "distill_alpha": 0.5, "distill_match": "mean",
    "repulsion": 0.0, "repulsion_bandwidth": 0.5,
}  # fmt: skip


def test_an_old_record_of_an_mlp_becomes_the_options_objects():
    old = {"num_members": 4, "backbone": "mlp", "hidden_sizes": [64, 32, 16], "width": None, "depth": None, "widen_factor": None,
           "dropout": 0.05, **OLD_DEFAULTS}  # fmt: skip
    new, found = translate_model_args(old, "ensemble_lab.methods.BatchEnsemble")
    assert new == {"num_members": 4, "backbone": {"class_path": MLP, "init_args": {"hidden_sizes": [64, 32, 16]}}, "dropout": 0.05,
                   "distillation": None, "repulsion": None}  # fmt: skip
    assert set(found) == {"hidden_sizes", "width", "depth", "widen_factor", *OLD_DEFAULTS}


def test_a_left_out_backbone_option_takes_its_default_and_other_backbones_defaults_are_dropped():
    # early releases recorded hidden_sizes [64, 32, 16] and width 64 whatever the backbone
    old = {"backbone": "resnet18", "hidden_sizes": [64, 32, 16], "width": None, **OLD_DEFAULTS}
    assert translate_model_args(old)[0]["backbone"] == {"class_path": RESNET, "init_args": {"width": 64}}
    wrn = {"backbone": "wide_resnet", "depth": 16, "widen_factor": None, **OLD_DEFAULTS}
    assert translate_model_args(wrn)[0]["backbone"] == {"class_path": WRN, "init_args": {"depth": 16, "widen_factor": 10}}
    with pytest.raises(ConfigError, match="--model.width applies to the resnet18 backbone, not mlp"):
        translate_model_args({"backbone": "mlp", "width": 8})


def test_distillation_and_repulsion_become_their_objects():
    old = {**OLD_DEFAULTS, "teacher": "t.ckpt", "distill_alpha": 0.2, "repulsion": 0.3, "repulsion_bandwidth": 0.7}
    new, _ = translate_model_args(old)
    assert new == {"distillation": {"teacher": "t.ckpt", "temperature": 4.0, "alpha": 0.2, "match": "mean"},
                   "repulsion": {"strength": 0.3, "bandwidth": 0.7}}  # fmt: skip
    with pytest.raises(ConfigError, match="--model.distill_alpha applies only when distilling"):
        translate_model_args({"distill_alpha": 0.2}, strict=True)
    assert translate_model_args({"distill_alpha": 0.2})[0] == {"distill_alpha": 0.2}  # a record is kept, never refused
    already_new = {"repulsion": {"strength": 0.1, "bandwidth": 0.5}, "distillation": None}
    assert translate_model_args(already_new) == (already_new, [])


def test_options_a_last_release_record_predates_get_the_values_its_run_was_trained_with():
    old = {"backbone": "mlp", "hidden_sizes": [16], **OLD_DEFAULTS}
    assert translate_model_args(old, "ensemble_lab.methods.Masksembles")[0]["mask_placement"] == "block_outputs"
    packed = translate_model_args({**old, "gamma": 2}, "ensemble_lab.methods.PackedEnsemble")[0]
    assert (packed["min_channels_per_group"], packed["group_block_entry"]) == (0, True)
    assert "min_channels_per_group" not in translate_model_args({**old, "gamma": 1}, "ensemble_lab.methods.PackedEnsemble")[0]
    # a hand-written config (not a full record) without mask_placement means today's default: untouched
    assert "mask_placement" not in translate_model_args({"backbone": "mlp", "hidden_sizes": [16]}, "Masksembles")[0]
    # a record that already has them keeps its values
    kept = translate_model_args({**old, "mask_placement": "inputs"}, "Masksembles")[0]
    assert kept["mask_placement"] == "inputs"


def test_configs_and_flat_records_are_translated_alike():
    config = {"seed_everything": 1, "model": {"class_path": "ensemble_lab.methods.SingleModel",
              "init_args": {"backbone": "mlp", "hidden_sizes": [8], **OLD_DEFAULTS}}}  # fmt: skip
    assert translate_config(config)["model"]["init_args"] == {
        "backbone": {"class_path": MLP, "init_args": {"hidden_sizes": [8]}}, "distillation": None, "repulsion": None,
    }  # fmt: skip
    flat = {"seed_everything": 1, "model.class_path": "ensemble_lab.methods.SingleModel", "model.init_args.backbone": "mlp",
            "model.init_args.hidden_sizes": [8], "model.init_args.optimizer.init_args.lr": 0.1,
            **{f"model.init_args.{k}": v for k, v in OLD_DEFAULTS.items()}}  # fmt: skip
    assert translate_flat(flat) == {
        "seed_everything": 1, "model.class_path": "ensemble_lab.methods.SingleModel", "model.init_args.optimizer.init_args.lr": 0.1,
        "model.init_args.backbone.class_path": MLP, "model.init_args.backbone.init_args.hidden_sizes": [8],
        "model.init_args.distillation": None, "model.init_args.repulsion": None,
    }  # fmt: skip
    new_style = {"model.init_args.backbone.class_path": MLP, "model.init_args.repulsion": None}
    assert translate_flat(new_style) == new_style


@pytest.mark.parametrize(
    "old,new",
    [
        (["--model.hidden_sizes=[32,16]"], ["--model.backbone.hidden_sizes=[32,16]"]),
        (["--model.hidden_sizes", "[32,16]"], ["--model.backbone.hidden_sizes=[32,16]"]),
        (["--model.init_args.width=8"], ["--model.backbone.width=8"]),
        (["--model.width=null"], []),
        (["--model.teacher", "t.ckpt", "--model.distill_match=member"], ["--model.distillation.teacher=t.ckpt", "--model.distillation.match=member"]),
        (["--model.repulsion=0.3", "--model.repulsion_bandwidth=0.7"], ["--model.repulsion.strength=0.3", "--model.repulsion.bandwidth=0.7"]),
        (["--model.repulsion=0"], ["--model.repulsion=null"]),
        (["--model.repulsion=null"], ["--model.repulsion=null"]),  # the new spelling's own value
        # a short name selects the options class; chosen after its options, it is moved before them
        (["--model.width=8", "--model.backbone=resnet18"], [f"--model.backbone={RESNET}", "--model.backbone.width=8"]),
        (["--model.backbone", "mlp", "--trainer.max_epochs=1"], [f"--model.backbone={MLP}", "--trainer.max_epochs=1"]),
        (["--model.backbone.hidden_sizes=[8]", "--model.num_members=2"], ["--model.backbone.hidden_sizes=[8]", "--model.num_members=2"]),
    ],
)
def test_old_flags_are_spelled_anew_with_a_note(old, new):
    translated, notes = translate_argv(["fit", *old])
    assert translated == ["fit", *new]
    old_names = {"hidden_sizes", "width", "depth", "widen_factor", *OLD_DEFAULTS}
    flags = [a.split("=")[0] for a in old if a != "--model.repulsion=null"]
    renamed = [f for f in flags if f.removeprefix("--model.").removeprefix("init_args.") in old_names]
    assert [n.split(" ")[0] for n in notes] == renamed
    assert all("is deprecated (it still works): use --model." in n for n in notes)
