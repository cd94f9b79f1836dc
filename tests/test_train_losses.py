"""Stage losses: toy tensors by hand, and the stage-1 loss against the reference golden values."""
from __future__ import annotations

import json
import math

import pytest
import torch

from pyterrier_matroyshka.offline.paths import shared_golden_dir
from pyterrier_matroyshka.shape import Shape
from train.losses import by_group, cascade_anchors, ce_loss, hard_ce, soft_ce, stage1_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def _log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(x) for x in row))
    return [x - norm for x in row]


def _softmax(row: list[float]) -> list[float]:
    return [math.exp(x) for x in _log_softmax(row)]


def test_hard_ce_by_hand():
    scores = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    expected = -(_log_softmax(scores[0])[0] + _log_softmax(scores[1])[0]) / 2
    assert hard_ce(torch.tensor(scores)).item() == pytest.approx(expected, abs=1e-6)


def test_soft_ce_by_hand():
    scores, target = [[1.0, -1.0, 0.5]], [[0.7, 0.2, 0.1]]
    expected = -sum(t * l for t, l in zip(target[0], _log_softmax(scores[0])))
    assert soft_ce(torch.tensor(scores), torch.tensor(target)).item() == pytest.approx(expected, abs=1e-6)
    # soft CE to a one-hot target on index 0 is the hard CE
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert soft_ce(torch.tensor(scores), one_hot).item() == pytest.approx(hard_ce(torch.tensor(scores)).item())


def test_by_group_and_bad_size():
    assert by_group(torch.arange(6.0), 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="groups of 4"):
        by_group(torch.arange(6.0), 4)


def test_reference_anchor_rule_32_layers():
    anchors = cascade_anchors(range(4, 33))
    assert anchors[32] is None
    assert {k: anchors[k] for k in (31, 24, 23, 16, 15, 8, 7, 4)} == {31: 32, 24: 32, 23: 24, 16: 24, 15: 16,
                                                                        8: 16, 7: 8, 4: 8}
    assert all(anchors[k] == 8 * (k // 8 + 1) for k in range(4, 32))


def test_anchor_spacing_configurable():
    assert cascade_anchors([2, 3, 4, 5], spacing=1) == {5: None, 4: 5, 3: 4, 2: 3}
    assert cascade_anchors([2, 3, 4, 5], spacing=2) == {5: None, 4: 5, 3: 5, 2: 3}
    assert cascade_anchors(range(2, 9), spacing=8) == {8: None, **{k: 8 for k in range(2, 8)}}
    with pytest.raises(ValueError):
        cascade_anchors([2, 3], spacing=0)


def test_stage1_loss_by_hand():
    """Two exits, one group of 2: every term written out."""
    student = torch.tensor([[1.0, 0.0], [2.0, 1.0]])  # exits 3, 4
    external = torch.tensor([0.5, 0.0])
    uncompressed = {4: torch.tensor([3.0, 0.0])}
    loss = stage1_loss(student, [3, 4], 2, external=external, uncompressed=uncompressed)
    t_ext, t_4 = _softmax([0.5, 0.0]), _softmax([3.0, 0.0])
    expected = {("CE", 3): -_log_softmax([1.0, 0.0])[0], ("CE", 4): -_log_softmax([2.0, 1.0])[0],
                ("KD_external", 3): -sum(p * l for p, l in zip(t_ext, _log_softmax([1.0, 0.0]))),
                ("KD_external", 4): -sum(p * l for p, l in zip(t_ext, _log_softmax([2.0, 1.0]))),
                ("KD_cascade", 3): -sum(p * l for p, l in zip(t_4, _log_softmax([1.0, 0.0])))}
    assert set(loss.terms) == set(expected)
    for key, value in expected.items():
        assert loss.terms[key].item() == pytest.approx(value, abs=1e-6)
    assert loss.total.item() == pytest.approx(sum(expected.values()), abs=1e-5)
    mean = stage1_loss(student, [3, 4], 2, external=external, uncompressed=uncompressed, reduction="mean")
    by_kind = [(expected[("CE", 3)] + expected[("CE", 4)]) / 2,
               (expected[("KD_external", 3)] + expected[("KD_external", 4)]) / 2, expected[("KD_cascade", 3)]]
    assert mean.total.item() == pytest.approx(sum(by_kind), abs=1e-5)
    assert loss.per_exit("CE") == pytest.approx({3: expected[("CE", 3)], 4: expected[("CE", 4)]})


def test_ce_loss_only_ce_and_gradient_flows():
    student = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 2.0, 0.0, 1.0]], requires_grad=True)
    loss = ce_loss(student, [5, 6], 2)
    assert {k for k, _ in loss.terms} == {"CE"}
    loss.total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_cascade_needs_anchor_scores():
    with pytest.raises(ValueError, match="anchor exit 4"):
        stage1_loss(torch.zeros(2, 2), [3, 4], 2, uncompressed={3: torch.zeros(2)})


# --- golden: the reference's stage-1 loss on the tiny checkpoint -------------------------------------------------

GOLDEN = shared_golden_dir()
needs_golden = pytest.mark.skipif(GOLDEN is None, reason="../shared/golden is absent")


@pytest.fixture(scope="module")
def golden_stage1():
    from pyterrier_matroyshka.checkpoint import load_model

    record = json.loads((GOLDEN / "golden.json").read_text())["stage1_loss"]
    model, _ = load_model(str(GOLDEN / "tiny-matroyshka"))
    model.train()  # as the reference ran it: no dropout is active in this checkpoint
    return model, record


@needs_golden
@pytest.mark.golden
@pytest.mark.parametrize("variant", ["configs_reference", "configs_corrected"])
@pytest.mark.parametrize("name", ["r2_layers_2_4", "r4_layer_4_of_2_4_6", "r1_no_compression"])
def test_stage1_loss_matches_golden(golden_stage1, variant, name):
    model, record = golden_stage1
    config = record[variant][name]
    batch = {k: torch.tensor(v) for k, v in record["batch"].items()}
    exits = model.exit_depths
    sampled = config["sampled"]
    shape = Shape(exits, sampled["compress_layer_arg"], sampled["compress_ratio"])
    bugs = frozenset({"B2"}) if variant == "configs_reference" else frozenset()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "query_lengths", "prompt_lengths")}
    student = model(**inputs, shape=shape, reference_bugs=bugs)
    with torch.no_grad():
        full = model(**inputs, shape=Shape(exits), reference_bugs=bugs)
    group = record["train_group_size"]
    loss = stage1_loss(student, exits, group, external=batch["teacher_scores"],
                       uncompressed=dict(zip(exits, full)))
    assert loss.total.item() == pytest.approx(config["total_loss"], abs=1e-4)
    for term in config["terms"]:
        assert loss.terms[(term["term"], term["exit"])].item() == pytest.approx(term["value"], abs=1e-4), term
    assert len(loss.terms) == len(config["terms"])
    for depth, row in zip(exits, student.detach()):
        assert row.tolist() == pytest.approx(config["student_scores"][str(depth)], abs=1e-4)
    loss.total.backward()  # the compressed pass is differentiable end to end


def test_external_weight_scales_only_the_external_terms():
    import torch

    from train.losses import stage1_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(3, 8), torch.randn(8)
    full = stage1_loss(student, [2, 3, 4], 4, external=teacher)
    half = stage1_loss(student, [2, 3, 4], 4, external=teacher, external_weight=0.5)
    none = stage1_loss(student, [2, 3, 4], 4)
    kd = sum(v for (kind, _), v in full.terms.items() if kind == "KD_external")
    assert torch.isclose(half.total, none.total + 0.5 * kd) and torch.isclose(full.total, none.total + kd)
