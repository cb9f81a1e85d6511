"""datamodules.synthetic.hard: the hard task's layout, determinism, reuse and its data module with a val split."""

import numpy as np

from datamodules.modelnet import ModelNetDataModule
from datamodules.synthetic.hard import CLASS_NAMES, DETAILS, HardConfig, generate_hard, sample_hard

SMALL = HardConfig(train_per_class=4, test_per_class=1, points=256)


def test_forty_fine_grained_classes():
    assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == 40
    assert {n.rsplit("_", 1)[1] for n in CLASS_NAMES} == set(DETAILS)


def test_instances_are_seeded_and_the_detail_changes_the_shape():
    a = sample_hard(0, "spike", np.random.default_rng(1), SMALL)
    assert a.shape == (256, 6) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, sample_hard(0, "spike", np.random.default_rng(1), SMALL))
    assert not np.array_equal(a, sample_hard(0, "plain", np.random.default_rng(1), SMALL))


def test_every_cloud_is_centred_in_the_unit_sphere_as_modelnet():
    rng = np.random.default_rng(2)
    for base in range(3):
        pos = sample_hard(base, "knob", rng, SMALL)[:, :3]
        np.testing.assert_allclose(pos.mean(0), 0.0, atol=1e-5)
        assert abs(np.linalg.norm(pos, axis=1).max() - 1) < 1e-5


def test_written_in_the_resampled_layout_and_read_with_a_validation_split(tmp_path):
    root = generate_hard(tmp_path / "hard", SMALL)
    assert len((root / "modelnet40_train.txt").read_text().split()) == 40 * 4
    assert (root / "modelnet40_shape_names.txt").read_text().split() == CLASS_NAMES
    stamp = (root / "HARD_TASK.json").stat().st_mtime_ns
    generate_hard(root, SMALL)  # same settings: reused, not rewritten
    assert (root / "HARD_TASK.json").stat().st_mtime_ns == stamp
    dm = ModelNetDataModule(str(root), format="normal_resampled", num_points=128, val_split=0.25, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == 40
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (120, 40, 40)
