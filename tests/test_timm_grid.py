"""Grid features from timm backbones (features/timm_grid.py): the grid is the library's own, the preprocessing the
weights' own, and a ViT taken to another input size keeps its positions."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed

from features.config import TimmGridConfig
from features.timm_grid import build, create, grid_of

# tiny test models of the three shapes of grid: a ViT (class token + patches), a ConvNeXt, CLIP's ResNet (ByobNet)
MODELS = ["test_vit", "test_convnext", "resnet50_clip"]


@pytest.mark.parametrize("name", MODELS)
def test_our_grid_is_the_librarys_own_feature_map(name):
    """timm's forward_intermediates reshapes a ViT's tokens to the patch grid itself: our (cells, channels) rows must
    be that map's cells in row-major order, prefix tokens off, on the same random weights and input."""
    model = create(TimmGridConfig(model=name, weights="none", seed=3))
    size = model.pretrained_cfg["input_size"][-1]
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = grid_of(model, images)
        norm = {"norm": True} if hasattr(model, "num_prefix_tokens") else {}
        (library,) = model.forward_intermediates(images, indices=1, output_fmt="NCHW", intermediates_only=True,
                                                 **norm)
    assert ours.shape == (2, library.shape[2] * library.shape[3], library.shape[1])
    assert torch.equal(ours, library.flatten(2).transpose(1, 2))


def test_the_extractor_preprocesses_as_the_weights_were_trained():
    """CLIP's tower: bicubic resize of the shorter side to size / crop_pct, centre crop, CLIP's mean and std."""
    extractor = build(TimmGridConfig(model="resnet50_clip.openai", weights="none", image_size=224), torch.device("cpu"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    tensor = extractor.load(image, 1)["image"]
    assert tensor.shape == (3, 224, 224)
    resized = image.resize((int(400 * 248 / 300), 248), Image.BICUBIC)  # 224 / 0.9 = 248 on the shorter side
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = torch.from_numpy(((crop - mean) / std).transpose(2, 0, 1)).float()
    assert torch.allclose(tensor, expected, atol=0.05)  # (PIL vs torchvision bicubic: a few levels apart)
    out = extractor(extractor.collate([{"image": tensor}]))["features"]
    assert out.shape == (1, 49, 2048) == (1, extractor.rows, extractor.feature_dim)


def test_a_vit_at_another_input_size_keeps_a_resampled_position_embedding(tmp_path):
    trained = create(TimmGridConfig(model="test_vit", weights="none", seed=1))
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    extractor = build(TimmGridConfig(model="test_vit", weights=str(tmp_path / "weights.pth"), image_size=320),
                      torch.device("cpu"))
    table = extractor.model.pos_embed.detach()
    assert table.shape == (1, 1 + 20 * 20, 64) and extractor.rows == 400
    assert (table[0, 1:].abs().sum(-1) > 0).all()  # no patch position left at zero
    expected = resample_abs_pos_embed(trained.pos_embed.detach(), (20, 20), num_prefix_tokens=1)
    assert torch.allclose(table, expected)
    # the loaded weights are the trained ones (all but the resized table)
    for key, value in trained.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(extractor.model.state_dict()[key], value), key
