"""Named pretrained variants: where their adapters are found, the error when they are not, and a regression
test of the shipped model (slow: loads SmolLM2-135M and scores real SciFact pairs)."""
from __future__ import annotations

import numpy as np
import pytest

from pyterrier_matroyshka import pretrained
from pyterrier_matroyshka.pretrained import DEFAULT_VARIANT, VARIANTS, scorer_settings, variant, variant_dir

# Recorded with this engine in fp32 on BM25 top-10 of the first three SciFact test queries, at the variant's
# passage length (its adapters: stage 1 merged; vertical for L30, r2 for L15:r2@4, picked by shape and merged
# in). After re-shipping a model, tests/record_pretrained.py prints its new table.
EXPECTED = {"smollm2-scifact": {
    "L30": {"1": [("18953920", 9.4755), ("10608397", 7.8877), ("3770726", 7.787)],
            "3": [("2739854", 22.8563), ("14717500", 21.6729), ("9196472", 21.4991)],
            "5": [("13734012", 18.3918), ("1292369", 16.7279), ("17333231", 14.8762)]},
    "L15:r2@4": {"1": [("18953920", -10.7295), ("6550579", -11.7123), ("27049238", -12.4572)],
                 "3": [("2739854", -1.4672), ("14717500", -1.9587), ("9196472", -3.5279)],
                 "5": [("13734012", -5.5769), ("1292369", -6.4253), ("17333231", -7.0511)]},
}}


def fake_variant(root, name=None, missing=()):
    """The adapter folders of ``name`` (default: the default variant) under ``root`` (empty adapter configs),
    leaving out ``missing``."""
    chosen = variant(name)
    for adapter in chosen.merged + chosen.compensation:
        if adapter not in missing:
            (root / chosen.folder / adapter).mkdir(parents=True)
            (root / chosen.folder / adapter / "adapter_config.json").write_text("{}")
    return root / chosen.folder


@pytest.mark.unit
def test_the_default_variant_is_registered_and_found_in_the_repository():
    assert DEFAULT_VARIANT in VARIANTS and variant() is VARIANTS[DEFAULT_VARIANT]
    base, settings = scorer_settings()
    folder = variant_dir()
    assert base == variant().base and settings["max_length"] == variant().max_length
    assert settings["adapters"] == [str(folder / "stage1")]
    assert settings["compensation"] == [str(folder / a) for a in variant().compensation]
    assert (folder / "MODEL_CARD.md").is_file()


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_ships_its_adapters_and_model_card(name):
    folder = variant_dir(name)
    for adapter in variant(name).merged + variant(name).compensation:
        assert (folder / adapter / "adapter_model.safetensors").stat().st_size > 0
    assert (folder / "MODEL_CARD.md").is_file()


@pytest.mark.unit
def test_an_installed_package_finds_its_adapters_before_the_repository(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "models_dirs", lambda: [tmp_path / "site", tmp_path / "checkout"])
    fake_variant(tmp_path / "checkout")
    assert variant_dir() == tmp_path / "checkout" / variant().folder
    fake_variant(tmp_path / "site")
    assert variant_dir() == tmp_path / "site" / variant().folder


@pytest.mark.unit
def test_missing_adapters_are_an_error_that_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "models_dirs", lambda: [tmp_path])
    fake_variant(tmp_path, "smollm2-scifact", missing=("r4",))  # an incomplete copy is not used either
    with pytest.raises(FileNotFoundError, match=r"not installed.*pip wheel.*MATROYSHKA_MODELS.*train/recipe.sh"):
        scorer_settings("smollm2-scifact")
    from pyterrier_matroyshka import MatroyshkaReRanker, MatroyshkaScorer

    with pytest.raises(FileNotFoundError, match="not installed"):  # before any model loads: no untrained base
        MatroyshkaReRanker.from_pretrained("smollm2-scifact")
    with pytest.raises(FileNotFoundError, match="not installed"):
        MatroyshkaReRanker.from_pretrained()
    with pytest.raises(FileNotFoundError, match="not installed"):
        MatroyshkaScorer.from_pretrained(DEFAULT_VARIANT)


@pytest.mark.unit
def test_models_env_adds_a_folder_to_look_in(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.MODELS_ENV, str(tmp_path))
    assert pretrained.models_dirs()[0] == tmp_path
    folder = fake_variant(tmp_path)
    assert variant_dir() == folder


@pytest.mark.unit
def test_unknown_variants_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown pretrained variant 'nope'.*smollm2-scifact.*MatroyshkaScorer\(path"):
        variant("nope")


@pytest.fixture(scope="module")
def result(data_dir):
    from pyterrier_matroyshka import MatroyshkaReRanker
    from pyterrier_matroyshka.offline.bm25 import bm25
    from pyterrier_matroyshka.offline.collections import pt_dataset

    topics = pt_dataset("beir/scifact/test").get_topics().head(3)
    reranker = MatroyshkaReRanker.from_pretrained("smollm2-scifact", dtype="fp32", device="cpu")
    return {shape: (bm25("beir/scifact/test", num_results=10) >> reranker.with_shape(shape))(topics)
            for shape in EXPECTED["smollm2-scifact"]}


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(EXPECTED["smollm2-scifact"]))
def test_top_documents_and_scores(result, shape):
    frame = result[shape]
    for qid, expected in EXPECTED["smollm2-scifact"][shape].items():
        top = frame[frame.qid == qid].sort_values("rank").head(3)
        assert list(top.docno) == [d for d, _ in expected]
        assert np.allclose(top.score, [s for _, s in expected], atol=1e-3)
