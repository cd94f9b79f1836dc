"""Bad input through the Python API: every class of mistake gets a clear error naming the problem, damaged
checkpoints are refused with the names of what is wrong, and input that should work loses nothing.

Classes (as in the project's bad-input battery): 1 numbers out of range, 2 damaged checkpoints, 4 rows
dropped, 5 non-finite values, 6 late or unclear errors. Training (3, 5, 6) and the command lines (7) have
their own files.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyterrier as pt
import pytest
import torch
from safetensors.torch import load_file, save_file

from pyterrier_matroyshka import FirstStageFusion, MatroyshkaReRanker, MatroyshkaScorer, Shape
from pyterrier_matroyshka.checkpoint import load_model
from pyterrier_matroyshka.errors import UserError, check_int, check_real, numbered_lines
from pyterrier_matroyshka.fusion import fuse, zscore_per_query
from pyterrier_matroyshka.trec import read_trec_run, write_trec_run

from helpers import tiny_base

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [("what is a panda?", "The giant panda is a bear native to China."),
         ("what is a panda?", "Pandas is a Python library for data frames."),
         ("capital of france", "Paris is the capital and largest city of France."),
         ("capital of france", "Lyon lies at the confluence of the Rhone and the Saone.")]


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint) -> MatroyshkaScorer:
    return MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def candidates() -> pd.DataFrame:
    return pd.DataFrame({"qid": ["q1", "q1", "q2", "q2"], "query": [q for q, _ in PAIRS],
                         "docno": ["d1", "d2", "d3", "d4"], "text": [p for _, p in PAIRS],
                         "score": [12.0, 11.0, 9.5, 3.25], "rank": [0, 1, 0, 1]})


def _damaged_copy(source: Path, target: Path, edit=None, config=None) -> Path:
    """A copy of the golden checkpoint with its tensors (``edit(tensors)``) or config (``config(dict)``) changed."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("compensate"))
    if edit is not None:
        tensors = load_file(str(target / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(target / "model.safetensors"))
    if config is not None:
        values = json.loads((target / "config.json").read_text())
        config(values)
        (target / "config.json").write_text(json.dumps(values))
    return target


# ---- 1. numbers out of range ---------------------------------------------------------------------------

@pytest.mark.parametrize("setting, value", [("batch_size", 0), ("batch_size", -1), ("batch_size", 2.5),
                                            ("batch_size", "8"), ("batch_size", True), ("max_length", 0),
                                            ("max_length", -5), ("query_max_length", 0)])
def test_scoring_sizes_out_of_range_are_refused(scorer, setting, value):
    with pytest.raises(UserError, match=setting):
        scorer.compute_score(PAIRS, **{setting: value})


def test_sizes_are_checked_before_a_model_loads():
    # the folder does not exist: a size error first shows that nothing was loaded
    for setting in ("batch_size", "max_length"):
        with pytest.raises(UserError, match=setting):
            MatroyshkaScorer("/no/such/model", **{setting: 0})
    with pytest.raises(UserError, match="batch_size"):
        MatroyshkaReRanker("/no/such/model", batch_size=-1)
    with pytest.raises(UserError, match="layer_sep"):
        load_model("/no/such/model", layer_sep=0)


def test_every_batch_size_gives_every_score(scorer):
    one = scorer.compute_score(PAIRS, batch_size=1)
    three = scorer.compute_score(PAIRS, batch_size=3)
    assert len(one) == len(three) == len(PAIRS) and all(math.isfinite(s) for s in one)
    assert three == pytest.approx(one, abs=1e-5)
    assert scorer.compute_score([]) == []


def test_max_length_one_is_kept_not_replaced_by_the_default(scorer):
    # 0 used to fall back to 512; 1 is a legal budget and must be honoured (the passage cut to one token)
    short = scorer.compute_score(PAIRS, max_length=1)
    full = scorer.compute_score(PAIRS)
    assert short != pytest.approx(full, abs=1e-4)
    assert short == pytest.approx(scorer.compute_score([(q, p[:6]) for q, p in PAIRS], max_length=1), abs=1e-5)


def test_a_score_array_not_completely_filled_is_never_returned(scorer, monkeypatch):
    original = scorer.model.forward

    def every_other_pair_unscored(*args, **kwargs):
        out = original(*args, **kwargs)
        out[:, ::2] = float("nan")
        return out

    monkeypatch.setattr(scorer.model, "forward", every_other_pair_unscored)
    with pytest.raises(UserError, match=r"non-finite score \(\[nan\]\) to pair \d .*2 other pair"):
        scorer.compute_score(PAIRS, batch_size=3)


@pytest.mark.parametrize("make, message", [
    (lambda: Shape([8.7]), "exit depth must be a whole number, got 8.7"),
    (lambda: Shape(0), "exit depth must be >= 1"),
    (lambda: Shape([-3, 8]), "exit depth must be >= 1"),
    (lambda: Shape([8], [2.5], 2), "compression layer must be a whole number"),
    (lambda: Shape([8], [2], 2.0), "ratio must be an integer"),
    (lambda: Shape("8"), "exits must be a list of whole numbers, got str '8'"),
    (lambda: Shape.parse("L8.5"), "cannot parse shape 'L8.5'"),
    (lambda: Shape.coerce(8.7), "list of whole numbers"),
    (lambda: Shape.parse("L0"), "exit depth must be >= 1"),
])
def test_shapes_out_of_range_or_not_whole_are_refused(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_numpy_integers_are_whole_numbers():
    assert Shape(np.int64(8)) == Shape(8)
    assert Shape([np.int32(4), 8], [np.int64(2)], np.int64(2)) == Shape([4, 8], [2], 2)


@pytest.mark.parametrize("weight, message", [("0.5", "got str '0.5' .write 0.5 without quotes"),
                                             (1.5, r"outside \[0, 1\]"), (-0.1, r"outside \[0, 1\]"),
                                             (float("nan"), r"outside \[0, 1\]"), (True, "got bool"),
                                             (None, "got NoneType")])
def test_fusion_weight_must_be_a_number_in_0_1(weight, message):
    with pytest.raises(UserError, match=message):
        FirstStageFusion(pt.apply.generic(lambda frame: frame), weight)


def test_number_checks_name_the_setting():
    with pytest.raises(UserError, match="--top-k must be >= 1, got 0"):
        check_int("--top-k", 0)
    with pytest.raises(UserError, match="--lr must be > 0, got inf"):
        check_real("--lr", float("inf"), 0.0, above_minimum=True)
    assert check_int("steps", None, optional=True) is None and check_real("w", 1, 0, 1) == 1.0


# ---- 2. damaged checkpoints -------------------------------------------------------------------------------

def test_a_missing_backbone_tensor_is_refused_by_name(tiny_checkpoint, tmp_path):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m",
                            edit=lambda t: t.pop("model.layers.3.mlp.down_proj.weight"))
    with pytest.raises(UserError, match=r"missing 1: layers\.3\.mlp\.down_proj\.weight"):
        load_model(str(damaged))


def test_a_mis_shaped_tensor_is_refused_by_name(tiny_checkpoint, tmp_path):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m", edit=lambda t: t.update(
        {"model.layers.2.mlp.up_proj.weight": torch.zeros(3, 64)}))
    with pytest.raises(UserError, match=r"layers\.2\.mlp\.up_proj\.weight \(file \[3, 64\], model \[128, 64\]\)"):
        load_model(str(damaged))


def test_an_unexpected_tensor_is_refused_by_name(tiny_checkpoint, tmp_path):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m", edit=lambda t: t.update(
        {"model.layers.8.mlp.up_proj.weight": torch.zeros(128, 64)}))
    with pytest.raises(UserError, match=r"unexpected 1: model\.layers\.8\.mlp\.up_proj\.weight"):
        load_model(str(damaged))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(num_hidden_layers=6), r"unexpected 18: model\.layers\.6\."),
    (lambda c: c.update(hidden_size=32), "wrong shape"),
    (lambda c: c.update(start_layer=3), r"head weights do not match .*unexpected 1: lm_head\.6"),
    (lambda c: c.update(start_layer=1), r"head weights do not match .*missing 1: lm_head\.7"),
    (lambda c: c.update(start_layer=0), "start_layer must be in 1..8"),
])
def test_a_config_that_disagrees_with_its_weights_is_refused(tiny_checkpoint, tmp_path, change, message):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m", config=change)
    with pytest.raises(UserError, match=message):
        load_model(str(damaged))


def test_non_finite_weights_are_refused_by_name(tiny_checkpoint, tmp_path):
    def poison(tensors):
        tensors["model.layers.4.self_attn.o_proj.weight"][3, 5] = float("nan")

    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m", edit=poison)
    with pytest.raises(UserError, match=r"1 weight tensor\(s\) hold NaN or infinity, e.g. model\.layers\.4\.self_attn"):
        load_model(str(damaged))


def test_a_truncated_weights_file_is_named(tiny_checkpoint, tmp_path):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m")
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot read its weights .*damaged or incomplete"):
        load_model(str(damaged))
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_checkpoint / "compensate/layer/full", adapter)
    (adapter / "adapter_config.json").write_text("{ not json")
    with pytest.raises(UserError, match="cannot read its adapter config"):
        load_model(str(tiny_checkpoint), adapters=[str(adapter)])


def test_a_mis_shaped_head_is_refused(tiny_checkpoint, tmp_path):
    damaged = _damaged_copy(tiny_checkpoint, tmp_path / "m", edit=lambda t: t.update(
        {"lm_head.2.linear_head.weight": torch.zeros(64)}))
    with pytest.raises(UserError, match=r"lm_head\.2\.linear_head\.weight has shape \[64\], expected \[1, 64\]"):
        load_model(str(damaged))


@pytest.fixture(scope="module")
def four_layer_adapter(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:
    """A LoRA trained (here: randomised) for a 4-layer model of the golden's width, and that model."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("four")
    base = tiny_base(folder / "base", tiny_checkpoint, layers=4, hidden=64, model_type="mistral")
    core, _ = load_model(str(base), start_layer=2)
    peft = get_peft_model(core, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "linear_head"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft.save_pretrained(str(folder / "adapter"))
    return base, folder / "adapter"


def test_an_adapter_for_fewer_layers_is_refused(four_layer_adapter, tiny_checkpoint):
    base, adapter = four_layer_adapter
    assert load_model(str(base), adapters=[str(adapter)], start_layer=2)[0].num_layers == 4  # fits its own base
    with pytest.raises(UserError, match=r"no weights for \d+ LoRA tensor\(s\) of this model \(8 layers, 7 heads\).*"
                                        "fewer layers"):
        load_model(str(tiny_checkpoint), adapters=[str(adapter)])
    with pytest.raises(UserError, match="fewer layers"):
        MatroyshkaScorer(str(tiny_checkpoint), compensation=[str(adapter)])


def test_an_adapter_for_more_layers_is_refused(four_layer_adapter, tiny_checkpoint):
    base, _ = four_layer_adapter
    with pytest.raises(UserError, match="trained for another base"):
        load_model(str(base), adapters=[str(tiny_checkpoint / "compensate/layer/full")], start_layer=2)


def test_an_adapter_note_for_other_exits_is_refused(tiny_checkpoint, tmp_path):
    adapter = tmp_path / "full"
    shutil.copytree(tiny_checkpoint / "compensate/layer/full", adapter)
    (adapter / "matroyshka_adapter.json").write_text(json.dumps({"kind": "vertical", "start_layer": 4,
                                                                  "layer_sep": 1, "exits": [4, 5, 6, 7, 8]}))
    with pytest.raises(UserError, match=r"trained for other exits: start_layer 4 \(model 2\)"):
        load_model(str(tiny_checkpoint), adapters=[str(adapter)])


def test_two_compensation_adapters_with_one_folder_name_are_refused(tiny_checkpoint, tmp_path):
    other = tmp_path / "elsewhere" / "full"
    shutil.copytree(tiny_checkpoint / "compensate/token/ratio_2", other)
    first = str(tiny_checkpoint / "compensate/layer/full")
    with pytest.raises(UserError, match=f"{other} are both called 'full'"):
        MatroyshkaScorer(str(tiny_checkpoint), compensation=[first, str(other)])
    named = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", compensation={"vertical": first, "r2": str(other)})
    assert sorted(named.adapter_infos) == ["r2", "vertical"]


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model", "../nope", "~/nope-model"])
def test_a_local_path_that_does_not_exist_says_so(path):
    with pytest.raises(UserError, match="does not exist") as info:
        load_model(path)
    assert "Repo id" not in str(info.value)


def test_local_adapter_and_model_folders_are_checked(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match="adapter folder ./missing/adapter does not exist"):
        load_model(str(tiny_checkpoint), adapters=["./missing/adapter"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no adapter_config.json"):
        load_model(str(tiny_checkpoint), adapters=[str(tmp_path / "empty")])
    with pytest.raises(UserError, match="holds no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is a file"):
        load_model(str(tiny_checkpoint / "config.json"))


def test_the_golden_checkpoint_still_loads_with_its_adapters(tiny_checkpoint, golden, golden_pairs):
    scorer = MatroyshkaScorer(str(tiny_checkpoint), dtype="fp32", device="cpu",
                              adapters=[str(tiny_checkpoint / "compensate/layer/full")])
    scores = scorer.compute_score(golden_pairs[:4])
    assert len(scores) == 4 and all(math.isfinite(s) for s in scores)


# ---- 4. rows dropped -------------------------------------------------------------------------------------

def test_reranking_keeps_every_row_column_and_order(scorer, candidates):
    shuffled = candidates.iloc[[2, 0, 3, 1]].assign(extra=list("abcd"))
    out = MatroyshkaReRanker(scorer=scorer, shape="L4,8")(shuffled)
    assert len(out) == len(shuffled)
    assert list(out[["qid", "docno", "extra"]].itertuples(index=False)) == \
        list(shuffled[["qid", "docno", "extra"]].itertuples(index=False))
    assert {"score", "rank", "score_L4", "score_L8", "features"} <= set(out.columns)
    assert np.isfinite(out[["score", "score_L4", "score_L8"]].to_numpy()).all()


@pytest.mark.parametrize("column", ["qid", "docno"])
def test_a_missing_qid_or_docno_is_refused_by_row(scorer, candidates, column):
    bad = candidates.copy()
    bad[column] = bad[column].astype(object)
    bad.loc[2, column] = None
    with pytest.raises(UserError, match=f"column '{column}' is missing .None/NaN. in row 2"):
        MatroyshkaReRanker(scorer=scorer)(bad)


def test_a_bom_does_not_change_the_first_qid(tmp_path):
    path = tmp_path / "bom.run"
    path.write_bytes(b"\xef\xbb\xbf1 Q0 d1 1 2.0 r\n1 Q0 d2 2 1.0 r\n2 Q0 d3 1 0.5 r\n")
    run = read_trec_run(path)
    assert list(run["qid"]) == ["1", "1", "2"] and len(run) == 3


def test_run_qids_outside_the_topics_are_named(tmp_path, data_dir):
    from pyterrier_matroyshka.shape_comparison import first_stage

    path = tmp_path / "mixed.run"
    path.write_text("1 Q0 184 1 2.0 r\n9999 Q0 29 1 1.0 r\n")
    with pytest.raises(UserError, match=r"1 qid\(s\) are not among the topics of cranfield: \['9999'\]"):
        first_stage("cranfield", run=str(path))
    path.write_text("1 Q0 184 1 2.0 r\n2 Q0 29 1 1.0 r\n1 Q0 12 2 1.0 r\n")
    frame = first_stage("cranfield", run=str(path))
    assert len(frame) == 3 and frame["text"].map(len).gt(0).all() and frame["query"].notna().all()


def test_a_docno_missing_from_the_corpus_is_named(tmp_path, data_dir):
    from pyterrier_matroyshka.shape_comparison import first_stage

    path = tmp_path / "ghost.run"
    path.write_text("1 Q0 184 1 2.0 r\n1 Q0 no-such-doc 2 1.0 r\n")
    with pytest.raises(UserError, match=r"1 docno\(s\) are not in the corpus of cranfield: \['no-such-doc'\] "
                                        r"\(qids \['1'\]\)"):
        first_stage("cranfield", run=str(path))


# ---- 5. non-finite values --------------------------------------------------------------------------------

@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_scores_in_a_run_file_are_refused_with_file_and_line(tmp_path, score):
    path = tmp_path / "bad.run"
    path.write_text(f"1 Q0 d1 1 2.0 r\n1 Q0 d2 2 {score} r\n")
    with pytest.raises(UserError, match=f"bad.run, line 2: score '{score}' is not finite"):
        read_trec_run(path)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_never_written_to_a_run_file(tmp_path, score):
    frame = pd.DataFrame({"qid": ["1", "1"], "docno": ["a", "b"], "score": [1.0, score]})
    with pytest.raises(UserError, match="qid '1', docno 'b' is not a finite number"):
        write_trec_run(frame, tmp_path / "out.run")
    assert not (tmp_path / "out.run").exists()


def test_a_none_qid_is_never_written(tmp_path):
    frame = pd.DataFrame({"qid": ["1", None], "docno": ["a", "b"], "score": [1.0, 0.5]})
    with pytest.raises(UserError, match=r"qid \w+ \(row 1\) is missing"):
        write_trec_run(frame, tmp_path / "out.run")


@pytest.mark.parametrize("bad", [-float("inf"), float("inf"), float("nan")])
def test_a_non_finite_first_stage_score_is_refused_by_qid_and_docno(candidates, bad):
    reranked = candidates.assign(score=[0.1, 0.2, 0.3, 0.4])
    first = candidates.assign(score=[12.0, bad, 9.5, 3.25])
    with pytest.raises(UserError, match="first-stage score is .* for qid 'q1', docno 'd2'"):
        fuse(first, reranked, 0.5)
    with pytest.raises(UserError, match="re-ranker score is .* for qid 'q2', docno 'd3'"):
        fuse(candidates, reranked.assign(score=[0.1, 0.2, bad, 0.4]), 0.5)


def test_a_reranker_that_drops_rows_cannot_be_fused(candidates):
    reranked = candidates.assign(score=[0.1, 0.2, 0.3, 0.4]).iloc[[0, 1, 3]]
    with pytest.raises(UserError, match="dropped 1 of 4 candidate rows, e.g. qid 'q2', docno 'd3'"):
        fuse(candidates, reranked, 0.5)
    with pytest.raises(UserError, match="dropped 1 of 4"):
        FirstStageFusion(pt.apply.generic(lambda frame: frame.iloc[1:]), 0.5)(candidates)


def test_huge_first_stage_scores_keep_their_share_of_the_fusion(candidates):
    reranked = candidates.assign(score=[0.1, 0.2, 0.3, 0.4])
    plain = fuse(candidates, reranked, 0.5)
    for scale in (1e300, 1e-300):
        scaled = fuse(candidates.assign(score=candidates["score"] * scale), reranked, 0.5)
        assert np.isfinite(scaled["score"]).all()
        assert scaled["score"].to_numpy() == pytest.approx(plain["score"].to_numpy(), abs=1e-9)
    z = zscore_per_query(pd.Series(["a", "a", "a"]), pd.Series([1e308, -1e308, 0.0]))
    assert z == pytest.approx([1.2247449, -1.2247449, 0.0])


def test_a_model_that_gives_nan_is_refused(scorer, monkeypatch):
    head = scorer.core.lm_head[-1].linear_head.weight
    saved = head.detach().clone()
    with torch.no_grad():
        head[0, 0] = float("nan")
    try:
        with pytest.raises(UserError, match=r"non-finite score \(\[nan\]\) to pair 0 .*3 other pair"):
            scorer.compute_score(PAIRS)
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert all(math.isfinite(s) for s in scorer.compute_score(PAIRS))


# ---- 6. late or unclear errors ---------------------------------------------------------------------------

def test_a_lone_surrogate_is_named_by_pair_and_by_row(scorer, candidates):
    pairs = list(PAIRS)
    pairs[1] = (pairs[1][0], "broken \udc8f text")
    with pytest.raises(UserError, match="pair 1: passage holds a lone surrogate '.udc8f' at character 7"):
        scorer.compute_score(pairs)
    bad = candidates.astype({"text": object})  # an Arrow string column cannot even hold one
    bad.loc[3, "text"] = "broken \ud800"
    with pytest.raises(UserError, match="column 'text' at qid 'q2', docno 'd4' holds a lone surrogate"):
        MatroyshkaReRanker(scorer=scorer)(bad)


def test_latin1_bytes_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin.run"
    path.write_bytes(b"1 Q0 d1 1 2.0 r\n1 Q0 caf\xe9 2 1.0 r\n")
    with pytest.raises(UserError, match=r"latin.run, line 2: byte 0xe9 at column 9 is not UTF-8"):
        read_trec_run(path)
    lines = numbered_lines(tmp_path / "latin.run")
    assert next(lines) == (1, "1 Q0 d1 1 2.0 r\n")  # lines before the bad one read fine
    with pytest.raises(UserError, match="line 2"):
        next(lines)


def test_unknown_dataset_is_a_clear_error():
    from pyterrier_matroyshka.offline.collections import ensure_dataset

    with pytest.raises(UserError, match="unknown dataset 'no/such/dataset'"):
        ensure_dataset("no/such/dataset")
