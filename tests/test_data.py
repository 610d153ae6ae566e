import shutil

import pytest
import torch

from mnistlab.config import compose_run_config
from mnistlab.data.augment import RandomAffine, RandomErasing, build_augment
from mnistlab.data.digits import MNISTDataModule
from mnistlab.data.files import find_idx_files
from mnistlab.data.idx import read_idx
from mnistlab.data.synthetic import write_synthetic_dataset
from mnistlab.errors import ConfigError, DataError
from mnistlab.validation import check_config

from .conftest import configured


def make_module(root, **kwargs) -> MNISTDataModule:
    settings = dict(root=str(root), val_size=200, batch_size=64, eval_batch_size=100, download=False) | kwargs
    module = configured("data", **settings)
    module.setup("fit")
    return module


def test_val_size_0_trains_on_every_training_image_and_skips_validation(synthetic_root):
    module = make_module(synthetic_root, val_size=0)
    assert set(module.splits) == {"train", "test"}
    assert torch.equal(module.splits["train"][0][:, 0], read_idx(synthetic_root / "train-images-idx3-ubyte.gz"))
    assert module.val_dataloader() == []  # Lightning skips validation for an empty list
    assert sum(len(y) for _, y in module.train_dataloader()) == 1200 // 64 * 64  # full batches only


def test_finds_files_in_a_plain_folder_and_in_torchvisions_layout(tmp_path, synthetic_root):
    assert find_idx_files(synthetic_root, "mnist")["train-images-idx3-ubyte"].name == "train-images-idx3-ubyte.gz"
    layout = write_synthetic_dataset(tmp_path / "FashionMNIST" / "raw", n_train=10, n_test=5, gzipped=False)
    found = find_idx_files(tmp_path, "fashion_mnist")
    assert found == {f.name: f for f in layout.iterdir()}
    # The dotted spelling some mirrors unpack to (train-images.idx3-ubyte) is accepted too.
    dotted = tmp_path / "dotted"
    dotted.mkdir()
    for f in layout.iterdir():
        shutil.copy(f, dotted / f.name.replace("-idx", ".idx"))
    assert find_idx_files(dotted, "mnist")["t10k-labels-idx1-ubyte"].name == "t10k-labels.idx1-ubyte"
    assert find_idx_files(tmp_path / "missing", "mnist") is None


def test_splits_official_test_and_last_training_slice_as_validation(synthetic_root):
    module = make_module(synthetic_root)
    train_images = read_idx(synthetic_root / "train-images-idx3-ubyte.gz")
    test_labels = read_idx(synthetic_root / "t10k-labels-idx1-ubyte.gz")
    images, labels = module.splits["train"]
    assert images.shape == (1000, 1, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(module.splits["val"][0][:, 0], train_images[-200:])
    assert torch.equal(images[:, 0], train_images[:-200])
    assert torch.equal(module.splits["test"][1], test_labels.long())


def test_validation_slice_does_not_depend_on_the_seed(synthetic_root):
    a, b = make_module(synthetic_root, seed=1), make_module(synthetic_root, seed=2)
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    assert [y.tolist() for _, y in a.val_dataloader()] == [y.tolist() for _, y in b.val_dataloader()]


def test_batches_are_normalised_with_the_dataset_mean_and_std(synthetic_root):
    module = make_module(synthetic_root, mean=0.2, std=0.4)
    x, y = next(iter(module.val_dataloader()))
    raw, labels = module.splits["val"]
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and x.device == raw.device
    assert torch.allclose(x, (raw[:100].float() / 255 - 0.2) / 0.4)
    assert torch.equal(y, labels[:100])
    assert sum(len(y) for _, y in module.test_dataloader()) == 300  # evaluation keeps the last short batch


def test_training_order_is_a_seeded_shuffle_per_epoch(synthetic_root):
    module = make_module(synthetic_root, seed=7)
    labels = module.splits["train"][1]

    def epoch_order(loader, epoch):
        loader.sampler.set_epoch(epoch)  # what Lightning calls at every epoch start
        return torch.cat([y for _, y in loader])

    loader = module.train_dataloader()
    assert len(loader) == 1000 // 64  # drop_last: full batches only
    first = epoch_order(loader, 0)
    assert len(first) == 15 * 64
    assert torch.equal(first, epoch_order(make_module(synthetic_root, seed=7).train_dataloader(), 0))
    assert not torch.equal(first, epoch_order(loader, 1))
    assert not torch.equal(first, epoch_order(make_module(synthetic_root, seed=8).train_dataloader(), 0))
    assert not torch.equal(first, labels[: len(first)])  # shuffled, not in file order
    # Every image appears at most once per epoch: the order is a permutation cut into batches.
    order = torch.tensor(list(loader.sampler))
    assert torch.equal(order.sort().values, torch.arange(1000))


def test_augmentation_draws_fresh_parameters_for_every_image():
    augment = RandomAffine(degrees=15, translate=0.1, scale=0.1)
    digit = torch.zeros(1, 1, 28, 28)
    digit[..., 8:20, 12:16] = 1.0
    batch = augment(digit.expand(16, -1, -1, -1).contiguous())
    assert batch.shape == (16, 1, 28, 28) and torch.isfinite(batch).all()
    flat = batch.flatten(1)
    distances = torch.cdist(flat, flat)
    assert (distances + torch.eye(16) > 1e-3).all(), "two copies of one image got the same transform"


def test_augmentation_with_zero_ranges_is_the_identity_and_hflip_mirrors():
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(RandomAffine(degrees=0, translate=0, scale=0)(x), x, atol=1e-5)
    assert torch.allclose(RandomAffine(degrees=0, translate=0, scale=0, hflip=1.0)(x), x.flip(-1), atol=1e-5)
    torch.manual_seed(0)
    one = x[:1].expand(400, -1, -1, -1)
    flipped = RandomAffine(degrees=0, translate=0, scale=0, hflip=0.5)(one)
    mirrored = (flipped - one.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert 150 < int(mirrored.sum()) < 250  # about half, each image drawn on its own


def test_augmentation_touches_the_training_split_only(synthetic_root):
    module = make_module(synthetic_root, augment={"degrees": 10, "translate": 0.1, "scale": 0.1})
    x, _ = next(iter(module.val_dataloader()))
    assert torch.allclose(x, module.normalize(module.splits["val"][0][:100]))
    loader = module.train_dataloader()
    loader.sampler.set_epoch(0)
    augmented, _ = next(iter(loader))
    plain = module.normalize(module.splits["train"][0][torch.tensor(list(loader.sampler))[:64]])
    assert not torch.allclose(augmented, plain, atol=1e-3)


def test_missing_files_offline_give_one_line_naming_folder_and_files(tmp_path):
    module = configured("data", root=str(tmp_path / "nowhere"), download=False)
    module.prepare_data()
    with pytest.raises(DataError) as info:
        module.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    for expected in (str(tmp_path / "nowhere"), str(tmp_path / "nowhere" / "MNIST" / "raw"),
                     "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     "t10k-labels-idx1-ubyte", "data.download=false", "data.root=PATH"):
        assert expected in message


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"name": "emnist"}, "data.name='emnist' must be one of fashion_mnist, kmnist, mnist"),
    ({"val_size": 1200}, "data.val_size=1200 must be between 0 and 1199"),
    ({"val_size": -1}, "data.val_size=-1 must be between 0 and 1199"),
])
def test_bad_settings_are_config_errors(synthetic_root, kwargs, says):
    with pytest.raises(ConfigError) as info:
        make_module(synthetic_root, **kwargs)
    assert says in str(info.value)


def test_image_label_count_mismatch_names_both_files(tmp_path, synthetic_root):
    root = tmp_path / "mismatch"
    shutil.copytree(synthetic_root, root)
    shutil.copy(root / "t10k-labels-idx1-ubyte.gz", root / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz holds 1200 images but .*"
                                        r"train-labels-idx1-ubyte\.gz holds 300 labels"):
        make_module(root)


def test_wrong_image_size_is_reported(synthetic_root):
    with pytest.raises(DataError, match=r"holds 28x28 images, but data.image_size=32"):
        make_module(synthetic_root, image_size=32)


def test_random_erasing_blanks_one_rectangle_per_chosen_image():
    ones = torch.ones(400, 1, 28, 28)
    assert torch.equal(RandomErasing(p=0.0)(ones), ones)
    erased = RandomErasing(p=1.0, scale=(0.02, 0.33))(ones)[:, 0] == 0
    for mask in erased:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box  # the zeros fill their bounding box: one rectangle
        assert 0.02 * 784 * 0.5 <= mask.sum() <= 0.33 * 784 * 1.2  # area drawn from scale (pixel rounding aside)
    areas = erased.float().mean((1, 2))
    assert abs(areas.mean().item() - (0.02 + 0.33) / 2) < 0.03  # the area fraction is uniform on the scale range
    # Each image draws its own box, and p picks which images are erased.
    assert len({m.numpy().tobytes() for m in erased}) > 350
    half = RandomErasing(p=0.5)(ones)
    assert 0.4 < (half.amin((1, 2, 3)) == 0).float().mean() < 0.6


def test_bad_augment_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^data.augment: unknown key 'bogus'; allowed: degrees, translate, scale, "
                                          r"hflip, erase$"):
        build_augment(erase=0.5, bogus=1)
    with pytest.raises(ConfigError, match=r"^data.augment.erase=1.5 must be in \[0, 1\]$"):
        check_config(compose_run_config(["data.augment={erase: 1.5}"]))
    assert len(build_augment(translate=0.1, erase=0.5)) == 2 and len(build_augment(translate=0.1)) == 1
