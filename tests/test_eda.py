"""course_utils.eda: pinned statistics on hand-made data, input errors, figures."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_utils import eda, plots  # noqa: E402
from course_utils.data import save_gray_jpeg  # noqa: E402
from course_utils.labels import CHEXPERT_LABELS  # noqa: E402

NAN = float("nan")


def _row(**values: float) -> list[float]:
    names = {label.replace(" ", "_"): label for label in CHEXPERT_LABELS}
    out = dict.fromkeys(CHEXPERT_LABELS, NAN)
    for key, value in values.items():
        out[names[key]] = value
    return [out[label] for label in CHEXPERT_LABELS]


@pytest.fixture
def small() -> dict:
    """Four studies; statistics worked out by hand in the tests below."""
    labels = [
        _row(No_Finding=1, Cardiomegaly=0),
        _row(Cardiomegaly=1, Edema=1, Pleural_Effusion=-1),
        _row(Cardiomegaly=1, Pleural_Effusion=1, Support_Devices=1),
        _row(),
    ]
    reports = [
        "Heart size is normal. The lungs are clear.",  # 8 words
        "The heart is enlarged. Mild edema. Possible effusion.",  # 8 words
        "Enlarged heart, effusion, and a tube in place.",  # 8 words
        "XXXX XXXX.",  # 2 words
    ]
    return {"reports": reports, "labels": torch.tensor(labels, dtype=torch.float32)}


def test_label_counts_keep_four_states_apart(small):
    counts = eda.label_counts(small["labels"])
    assert list(counts.columns) == ["positive", "uncertain", "negative", "not mentioned"]
    assert counts.loc["Cardiomegaly"].tolist() == [2, 0, 1, 1]
    assert counts.loc["Pleural Effusion"].tolist() == [1, 1, 0, 2]
    assert counts.loc["No Finding"].tolist() == [1, 0, 0, 3]
    assert counts.loc["Fracture"].tolist() == [0, 0, 0, 4]
    assert (counts.sum(axis=1) == 4).all()


def test_prevalence_and_imbalance(small):
    stats = eda.analyze_dataset(small, plot=False)
    assert stats["prevalence"]["Cardiomegaly"] == pytest.approx(0.5)
    assert stats["imbalance_ratio"]["Cardiomegaly"] == pytest.approx(1.0)  # (4 - 2) / 2
    assert stats["imbalance_ratio"]["Edema"] == pytest.approx(3.0)  # (4 - 1) / 1
    assert math.isinf(stats["imbalance_ratio"]["Fracture"])


def test_cooccurrence_counts_positive_pairs_only(small):
    cooc = eda.cooccurrence_matrix(small["labels"])
    assert cooc.shape == (13, 13) and list(cooc.index) == list(CHEXPERT_LABELS[1:])
    assert cooc.loc["Cardiomegaly", "Edema"] == 1
    assert cooc.loc["Cardiomegaly", "Pleural Effusion"] == 1  # study 2's effusion is uncertain
    assert cooc.loc["Edema", "Pleural Effusion"] == 0
    assert cooc.loc["Cardiomegaly", "Cardiomegaly"] == 2
    assert cooc.loc["Support Devices", "Pleural Effusion"] == 1


def test_cooccurrence_properties_on_random_labels():
    rng = np.random.default_rng(3)
    labels = rng.choice([1.0, 0.0, -1.0, NAN], size=(200, 14))
    cooc = eda.cooccurrence_matrix(labels).to_numpy()
    assert np.array_equal(cooc, cooc.T)
    assert np.array_equal(np.diag(cooc), (labels[:, 1:] == 1).sum(0))


def test_lengths_normal_share_and_terms(small):
    stats = eda.analyze_dataset(small, plot=False)
    assert stats["report_length"].tolist() == [8, 8, 8, 2]
    assert stats["report_length_stats"]["mean"] == pytest.approx(6.5)
    assert stats["normal_vs_abnormal"].to_dict() == {"normal": 1, "abnormal": 3}
    assert stats["normal_share"] == pytest.approx(0.25)
    terms = stats["top_terms"]
    # heart x3, effusion x2, enlarged x2; xxxx, "is", "the", "and", "a" dropped; ties a-z
    assert terms.index[:3].tolist() == ["heart", "effusion", "enlarged"]
    assert terms.tolist()[:3] == [3, 2, 2]
    assert "xxxx" not in terms.index and "the" not in terms.index
    assert terms.index[3:].tolist() == sorted(terms.index[3:])


def test_top_terms_k_and_tie_break():
    terms = eda.top_terms(["beta alpha gamma", "gamma"], k=2)
    assert terms.to_dict() == {"gamma": 2, "alpha": 1}
    with pytest.raises(ValueError, match="k must be"):
        eda.top_terms(["a"], k=0)


def test_a_support_device_alone_is_normal():
    labels = [_row(No_Finding=1, Support_Devices=1), _row(Pneumothorax=-1)]
    assert eda.normal_vs_abnormal(labels).to_dict() == {"normal": 1, "abnormal": 1}


def test_label_matrix_accepts_dataframe_and_rejects_bad_input():
    frame = pd.DataFrame([_row(Edema=1)], columns=list(CHEXPERT_LABELS))
    assert eda.label_matrix(frame[list(reversed(CHEXPERT_LABELS))])[0, 5] == 1.0
    with pytest.raises(ValueError, match="shape"):
        eda.label_matrix(np.zeros((3, 13)))
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        eda.label_matrix(np.full((1, 14), 2.0))
    with pytest.raises(ValueError, match="lacks column"):
        eda.label_matrix(frame.drop(columns="Edema"))


def test_analyze_dataset_rejects_bad_datasets(small):
    with pytest.raises(TypeError, match="dict"):
        eda.analyze_dataset([1, 2], plot=False)
    with pytest.raises(KeyError, match="labels"):
        eda.analyze_dataset({"reports": ["a"]}, plot=False)
    with pytest.raises(TypeError, match=r"reports'\]\[1\]"):
        eda.analyze_dataset({"reports": ["a", None], "labels": np.zeros((2, 14))}, plot=False)
    with pytest.raises(ValueError, match="2 reports but 4 label rows"):
        eda.analyze_dataset({"reports": ["a", "b"], "labels": small["labels"]}, plot=False)
    with pytest.raises(ValueError, match="empty"):
        eda.analyze_dataset({"reports": [], "labels": np.zeros((0, 14))}, plot=False)
    with pytest.raises(KeyError, match="images"):
        eda.analyze_dataset(small, plot=True)


def test_sample_indices_are_seeded_and_distinct():
    first = eda.sample_indices(50, 9, seed=1)
    assert first == eda.sample_indices(50, 9, seed=1)
    assert len(set(first)) == 9 and first == sorted(first)
    assert eda.sample_indices(4, 9) == [0, 1, 2, 3]


def test_figures(small, tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"img{i}.jpg"
        save_gray_jpeg(np.full((16, 16), i / 4, dtype=np.float32), path)
        paths.append(str(path))
    stats = eda.analyze_dataset({**small, "images": paths}, plot=True, n_samples=4)
    figures = stats["figures"]
    assert set(figures) == {"label_counts", "imbalance", "report_length", "samples",
                            "cooccurrence", "normal_vs_abnormal", "top_terms"}  # fmt: skip
    assert all(isinstance(fig, plt.Figure) for fig in figures.values())
    assert len(figures["samples"].axes) == 6  # 4 studies, 3 per row: a 2 x 3 grid
    plt.close("all")


def test_per_label_f1_plot():
    per_label = {"a": pd.Series({"Edema": 0.5, "Fracture": 0.0}), "b": pd.Series({"Edema": 1.0})}
    fig = plots.plot_per_label_f1(per_label)
    assert len(fig.axes[0].patches) == 4
    plt.close(fig)


def test_top_pairs_with_conditional_shares(small):
    pairs = eda.top_pairs(eda.cooccurrence_matrix(small["labels"]), k=3)
    assert list(pairs.columns) == ["a", "b", "studies", "P(b | a)", "P(a | b)"]
    first = pairs.iloc[0]
    assert (first["a"], first["b"], first["studies"]) == ("Cardiomegaly", "Edema", 1)
    assert first["P(b | a)"] == pytest.approx(0.5) and first["P(a | b)"] == pytest.approx(1.0)
    assert len(pairs) == 3 and (pairs["studies"] == 1).all()
