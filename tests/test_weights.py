"""Official checkpoints: each method's official key names and shapes map onto ours (strict, both ways),
imports are numerically the model they came from, and bad files get one clear error and no output.

`fixtures/official_keys/*.json.gz` hold the key names and shapes of the official models (DataParallel
state dicts, as the official training scripts save them), dumped from the official repositories:
IBM action-recognition-pytorch, mit-han-lab/temporal-shift-module, BeSpontaneous/AFNet-pytorch,
xaCheng1996/SLLM, facebookresearch/SlowFast (MViTv2), Sense-X/UniFormer and ty-97/H2CN. They hold no
weights and no code.
"""

import gzip
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from actionlab import tracking
from actionlab.models import folder, weights
from actionlab.cli import main
from workloads import get_workload

FIXTURES = Path(__file__).parent / "fixtures" / "official_keys"


def _fixture(name):
    with gzip.open(FIXTURES / f"{name}.json.gz", "rt") as f:
        return json.load(f)


def _meta_state(keys: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def _text_file(tmp_path, num_classes, dim=512):
    path = tmp_path / "text.npy"
    np.save(path, np.random.default_rng(0).standard_normal((num_classes, dim)).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".json.gz") for p in FIXTURES.glob("*.json.gz")))
def test_official_keys_map_onto_ours_strictly_both_ways(name, tmp_path):
    fx = _fixture(name)
    cfg = fx["config"]
    params = dict(cfg["params"])
    if cfg.get("text_embeddings"):
        params["text_embeddings_file"] = _text_file(tmp_path, cfg["num_classes"])
    with torch.device("meta"):
        model = get_workload(cfg["workload"]).build(params, num_classes=cfg["num_classes"], num_frames=cfg["num_frames"])
    state = weights.official_state({"epoch": 3, "state_dict": _meta_state(fx["keys"])})
    assert not any(k.startswith("module.") for k in state)
    ours = weights.convert(cfg["workload"], state, model)  # every official key maps (else it raises) ...
    assert sorted(ours) == sorted(model.state_dict())  # ... and every one of ours is filled
    assert all(ours[k].shape == v.shape for k, v in model.state_dict().items())


def test_a_changed_architecture_is_named():
    fx = _fixture("afnet_r50_f12")["keys"]
    with torch.device("meta"):
        wrong_frames = get_workload("afnet").build({}, num_classes=174, num_frames=8)
        wrong_classes = get_workload("afnet").build({}, num_classes=400, num_frames=12)
        wrong_depth = get_workload("afnet").build({"layers": (4, 8, 18, 3)}, num_classes=174, num_frames=12)
    state = weights.official_state(_meta_state(fx))
    with pytest.raises(weights.CheckpointError, match=r"navigation\.0\.temporal\.weight.*frames \(--frames\)"):
        weights.convert("afnet", state, wrong_frames)
    with pytest.raises(weights.CheckpointError, match=r"fc\.weight \(174, 2048\) vs \(400, 2048\).*classes"):
        weights.convert("afnet", state, wrong_classes)
    with pytest.raises(weights.CheckpointError, match=r"lacks.*depth \(--set layers"):
        weights.convert("afnet", state, wrong_depth)
    with torch.device("meta"):
        mobilenet = get_workload("afnet").build({"backbone": "mobilenetv3"}, num_classes=174, num_frames=12)
        resnet = get_workload("afnet").build({}, num_classes=174, num_frames=12)
    with pytest.raises(weights.CheckpointError, match=r"backbone \(--set backbone=mobilenetv3"):
        weights.convert("afnet", state, mobilenet)  # an AF-ResNet checkpoint, built as AF-MobileNetV3
    mbv3_state = weights.official_state(_meta_state(_fixture("afnet_mbv3_f12")["keys"]))
    with pytest.raises(weights.CheckpointError, match=r"backbone \(--set backbone=mobilenetv3"):
        weights.convert("afnet", mbv3_state, resnet)  # and the other way round


def test_another_methods_checkpoint_is_named(tmp_path):
    path = tmp_path / "afnet.pth.tar"
    keys = _fixture("afnet_r50_f12")["keys"]
    torch.save({"state_dict": {k: torch.zeros(1) for k in keys}}, path)
    out = tmp_path / "out"
    with pytest.raises(weights.CheckpointError, match=r"a checkpoint of 'afnet'.*actionlab weights import afnet"):
        weights.import_checkpoint("tam", path, out, num_classes=400, num_frames=8, params={"depth": 18})
    assert not out.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_truncated_and_code_carrying_files_are_refused_and_nothing_is_written(tmp_path):
    model = get_workload("tsn").build({"backbone": "resnet18"}, num_classes=5, num_frames=4)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hook": _Evil()}, evil)
    out = tmp_path / "out"
    kwargs = dict(num_classes=5, num_frames=4, params={"backbone": "resnet18"})
    with pytest.raises(weights.CheckpointError, match=r"truncated.pth: truncated or not a PyTorch checkpoint"):
        weights.import_checkpoint("tsn", truncated, out, **kwargs)
    with pytest.raises(weights.CheckpointError, match=r"evil.pth: the file holds pickled objects that only code"):
        weights.import_checkpoint("tsn", evil, out, **kwargs)
    with pytest.raises(weights.CheckpointError, match=r"no such checkpoint file"):
        weights.import_checkpoint("tsn", tmp_path / "absent.pth", out, **kwargs)
    assert not out.exists()
    weights.import_checkpoint("tsn", good, out, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]


def _ibm_tam_state(model) -> dict:
    """Our TAM state -> IBM's layout: three separate depthwise 1x1 convs, bare torchvision names."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("backbone.")
        if k.endswith("conv1.tam.conv.weight"):
            block = k.removesuffix(".conv1.tam.conv.weight")
            c = v.shape[0] // 3
            for j, part in enumerate(("prev_se", "curr_se", "next_se")):
                out[f"{block}.tam.{part}.fc1.weight"] = v.view(c, 3, *v.shape[1:])[:, j]
        else:
            out[k.replace("conv1.net.", "conv1.")] = v
    return {f"module.{k}": v for k, v in out.items()}


def test_import_cli_writes_a_model_dir_that_loads_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = get_workload("tam").build({"depth": 18}, num_classes=3, num_frames=8).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / "K400-TAM-ResNet-18-f8.pth.tar"
    torch.save({"epoch": 50, "arch": "TAM-resnet-18", "state_dict": _ibm_tam_state(model), "best_top1": 0.5}, ckpt)
    (tmp_path / "classes.txt").write_text("waving\nclapping\njumping\n")
    out = tmp_path / "tam18"
    assert main(["weights", "import", "tam", str(ckpt), "-o", str(out), "--num-classes", "3", "--frames", "8",
                 "--set", "depth=18", "--classes", str(tmp_path / "classes.txt")]) == 0
    loaded = folder.load_model(str(out))
    assert loaded.meta.classes == ("waving", "clapping", "jumping")
    assert loaded.meta.params == get_workload("tam").resolve_params({"depth": 18})  # every value recorded
    assert json.loads((out / "meta.json").read_text())["params"]["depth"] == 18
    clips = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(clips), model(clips))


def test_the_zoo_lists_commands_that_parse():
    from actionlab.cli import build_parser

    assert len(weights.ZOO) >= 10
    for z in weights.ZOO:
        args = build_parser().parse_args(z.command().split()[1:])
        assert (args.workload, args.num_classes, args.frames) == (z.workload, z.num_classes, z.num_frames)
        get_workload(z.workload).resolve_params({k: v for k, v in z.params.items()})


def test_register_tags_the_version_as_official(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = get_workload("tsn").build({"backbone": "resnet18"}, num_classes=5, num_frames=4)
    ckpt = tmp_path / "tsn.pth"
    torch.save({"state_dict": {f"module.{k.removeprefix('backbone.')}": v for k, v in model.state_dict().items()}}, ckpt)
    assert main(["weights", "import", "tsn", str(ckpt), "-o", str(tmp_path / "m"), "--num-classes", "5", "--frames",
                 "4", "--set", "backbone=resnet18", "--register", "zoo-tsn", "--dataset", "toy"]) == 0
    mv = tracking.client().get_model_version("zoo-tsn", "1")
    assert mv.tags["source"] == "official" and mv.tags["dataset"] == "toy" and mv.tags["workload"] == "tsn"
    assert mv.tags["paper_top1"] == ""  # not a zoo checkpoint: no paper number is invented
    assert not mv.aliases  # an official version is not the champion until it is evaluated here
    loaded = folder.load_model("models:/zoo-tsn/1")
    assert loaded.meta.workload == "tsn"
    run = tracking.client().get_run(mv.run_id)
    assert run.data.params["workload.params.backbone"] == "resnet18" and "workload.params.dropout" in run.data.params
    assert mv.source.startswith("models:/m-")  # an MLflow pyfunc model, like trained versions (test_mlflow_model)


def test_hsar_checkpoint_with_a_trained_ln_post_is_refused():
    """Officially the TMT's ln_post only sees a detached tensor, so it stays the identity; ours has no affine
    there, and a checkpoint where it is not the identity would not be the official model."""
    identity = {"#temporal.ln_post.weight": torch.ones(4), "#temporal.ln_post.bias": torch.zeros(4), "x": torch.ones(1)}
    assert weights.converter("hsar").prepare(identity, None) == {"x": identity["x"]}
    trained = {**identity, "#temporal.ln_post.weight": torch.full((4,), 2.0)}
    with pytest.raises(weights.CheckpointError, match="ln_post has trained"):
        weights.converter("hsar").prepare(trained, None)


# The recipe that is each zoo row's table row: both carry the paper's top-1, which must agree.
ZOO_RECIPES = {
    "ibm-k400-i3d-r50-f32": "ibm_i3d_r50_k400_32f", "ibm-k400-i3d-r101-f32": "ibm_i3d_r101_k400_32f",
    "ibm-ssv2-i3d-r50-f32": "ibm_i3d_r50_sthv2_32f", "ibm-ssv2-i3d-r101-f32": "ibm_i3d_r101_sthv2_32f",
    "ibm-k400-tam-r50-f32": "ibm_tam_r50_k400_32f", "ibm-k400-tam-r101-f32": "ibm_tam_r101_k400_32f",
    "ibm-ssv2-tam-r50-f32": "ibm_tam_r50_sthv2_32f", "ibm-ssv2-tam-r101-f32": "ibm_tam_r101_sthv2_32f",
    "afnet-tsm-r50-rt0.4-ssv1": "afnet_tsm_r50_rt04_sthv1_12f", "afnet-tsm-r50-rt0.8-ssv1": "afnet_tsm_r50_rt08_sthv1_12f",
    "afnet-tsm-r101-rt0.4-ssv1": "afnet_tsm_r101_rt04_sthv1_12f",
    "afnet-tsm-mbv3-rt0.4-ssv1": "afnet_tsm_mobilenetv3_rt04_sthv1_12f",
    "afnet-tsm-mbv3-rt0.8-ssv1": "afnet_tsm_mobilenetv3_rt08_sthv1_12f",
    "afnet-r50-rt0.5-ssv1": "afnet_r50_rt05_sthv1_8f", "afnet-r50-rt0.25-ssv1": "afnet_r50_rt025_sthv1_8f",
    "hsar-base-k400": "hsar_base_k400", "hsar-base-k600": "hsar_base_k600", "hsar-base-sthv2": "hsar_base_sthv2",
    "sllm-text4vis-hmdb-f16": "sllm_vitb32_hmdb51_16f",
    "h2cn-r50-k400-f8": "h2cn_r50_k400_8f", "h2cn-r50-k400-f16": "h2cn_r50_k400_16f",
}
ZOO_WITHOUT_RECIPE = {"mvitv2-s-16x4-k400", "uniformer-s-16x4-k400"}  # no table row ships for them


def test_zoo_and_recipes_give_the_same_paper_top1():
    from actionlab.config import read_recipe

    assert {z.name for z in weights.ZOO} == set(ZOO_RECIPES) | ZOO_WITHOUT_RECIPE
    for z in weights.ZOO:
        if z.name in ZOO_RECIPES:
            paper = read_recipe(ZOO_RECIPES[z.name]).paper
            assert (float(z.paper_top1) if z.paper_top1 else None) == paper.top1, z.name
            assert paper.dataset and z.num_frames == read_recipe(ZOO_RECIPES[z.name]).values["clip"]["num_frames"]


def test_a_checkpoint_is_identified_by_its_release_name_only():
    mvit = weights.zoo_by_name("mvitv2-s-16x4-k400")
    assert weights.zoo_entry(f"/downloads/{mvit.file}") == mvit
    # The only mvitv2 row has this workload, frame count and class count: a fine-tune of one's own does too.
    assert weights.zoo_entry("/runs/my_mvitv2_k400_finetune.pth") is None


def test_each_method_with_released_checkpoints_has_its_filter_beside_it():
    """`weights import` finds a method's converter through the registry (`checkpoint_filter_fn` in the
    method's module), never by branching on its name; a method with no release says which have one."""
    from workloads import list_workloads, tam

    importable = {name for name in list_workloads() if get_workload(name).checkpoint_filter_fn is not None}
    assert importable == {"afnet", "h2cn", "hsar", "i3d", "mvitv2", "r2plus1d", "r3d", "s3d", "sllm", "tam", "tsm",
                          "tsn", "uniformer"}
    assert weights.converter("tam") is tam.checkpoint_filter_fn
    with pytest.raises(weights.CheckpointError, match=r"no importer for workload 'svmix'.*'afnet'"):
        weights.converter("svmix")
