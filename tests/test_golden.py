"""Fidelity to the official code, guarded: each method's official model (reduced size, same blocks)
computed the golden outputs of `tests/fixtures/golden/<method>/` from a checkpoint in its own format;
`weights import` of that checkpoint, loaded as a user loads a model, must compute the same (within
1e-5 relative). Two same-shaped tensors exchanged in the checkpoint (what a converter mapping q/k/v,
TAM's prev/next or two convs by shape alone would do) must change the outputs far beyond that, so
the fixture can tell a wrong mapping from a right one. See `golden.py` for the fixture format and
`scripts/golden/` for how a fixture is made from the official repository."""

from __future__ import annotations

import golden
import pytest

METHODS = golden.methods()


def _imported(g: golden.Golden, tmp_path, *, swap: bool = False):
    tmp_path.mkdir(parents=True, exist_ok=True)
    checkpoint = g.write_checkpoint(tmp_path, swap=swap)
    if g.spec.get("load", "import") != "import":  # a module with no checkpoint format of its own (SV-Mix)
        return golden.LOADERS[g.spec["load"]](g, checkpoint)
    return golden.import_and_load(g, checkpoint)


def _errors(g: golden.Golden, model) -> dict:
    ours = golden.run_ours(model, g)
    assert set(ours) == set(g.outputs), f"outputs {sorted(ours)}, golden {sorted(g.outputs)}"
    return {name: golden.relative_error(ours[name], g.outputs[name]) for name in g.outputs}


@pytest.mark.parametrize("method", METHODS)
def test_imported_official_checkpoint_computes_the_official_outputs(method, tmp_path):
    g = golden.load(method)
    errors = _errors(g, _imported(g, tmp_path))
    assert all(e <= golden.RTOL for e in errors.values()), (
        f"{method}: relative error {errors} against {g.spec['official']['repo']}@{g.spec['official']['commit'][:10]}")


@pytest.mark.parametrize("method", METHODS)
def test_two_tensors_exchanged_change_the_outputs(method, tmp_path):
    g = golden.load(method)
    if not g.spec["swap"]:  # nothing to confuse: every float tensor has a shape of its own (SV-Mix's module)
        shapes = [tuple(shape) for _, shape, dtype, _ in g.spec["state"] if dtype.startswith(("float", "bfloat"))]
        assert len(set(shapes)) == len(shapes), f"{method}: same-shaped tensors exist, name two of them in swap"
        return
    a, b = g.spec["swap"]
    shapes = {key: shape for key, shape, _, _ in g.spec["state"]}
    assert shapes[a] == shapes[b], f"{method}: swap pair {a}, {b} differ in shape"
    errors = _errors(g, _imported(g, tmp_path, swap=True))
    assert max(errors.values()) > 1e-3, f"{method}: exchanging {a} and {b} left the outputs at {errors}"


def test_fixtures_stay_small():
    size = sum(f.stat().st_size for f in golden.GOLDEN.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"golden fixtures take {size / 2**20:.1f} MB, over the 40 MB budget"


# The methods whose official code exists (issue 21): IBM's five, MIT TSM, AFNet (ResNet and MobileNetV3),
# SLLM, HSAR, SV-Mix's module, H2CN, MViTv2 (PySlowFast) and UniFormer.
EXPECTED = {"ibm_tsn", "ibm_tam", "ibm_i3d", "ibm_r2plus1d", "ibm_s3d", "mit_tsm", "afnet_r50", "afnet_mbv3",
            "sllm", "hsar", "svmix", "h2cn", "mvitv2", "uniformer"}


def test_every_method_with_official_code_has_a_golden_fixture():
    assert set(METHODS) >= EXPECTED, f"no golden fixture for {sorted(EXPECTED - set(METHODS))}"
