"""Text-as-pixels codec: exact round trips on arbitrary UTF-8, truncation, robustness to noise, metrics."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from rae_hf.diffusion import FlowMatching
from rae_hf.text_pixels import TextPixelCodec, sequence_accuracy, token_accuracy

TEXTS = ["", "hello world", "emoji 🌍🚀👩‍👩‍👧", "中文 日本語 한국어", "tab\tnew\nline \x00 nul", "a" * 255]


def random_unicode(rng: random.Random, length: int) -> str:
    chars = []
    while len(chars) < length:
        code = rng.randrange(0x110000)
        if not 0xD800 <= code <= 0xDFFF:  # surrogates are not encodable in UTF-8
            chars.append(chr(code))
    return "".join(chars)


@pytest.mark.parametrize("scheme", ["bits", "flat"])
def test_round_trip_is_exact(scheme):
    codec = TextPixelCodec(64, 4, scheme=scheme)
    rng = random.Random(0)
    texts = TEXTS + [random_unicode(rng, rng.randrange(0, 60)) for _ in range(20)]
    images = codec.encode(texts)
    assert images.shape == (len(texts), 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert codec.num_tokens == 256 and codec.decode(images) == texts


def test_over_long_texts_are_cut_at_a_character_boundary_with_a_warning():
    codec = TextPixelCodec(64, 4)
    text = "é" * 200  # 400 bytes; capacity 255 bytes -> 127 characters
    with pytest.warns(UserWarning, match="cut"):
        images = codec.encode([text, "x" * 300])
    decoded = codec.decode(images)
    assert decoded == ["é" * 127, "x" * 255]


def test_patch_layout_follows_unpatchify_order():
    codec = TextPixelCodec(8, 4)  # 2x2 grid: token 1 -> top-right patch
    tokens = torch.tensor([[codec.pad_id, 0b101010101 & 0xFF, codec.pad_id, codec.pad_id]])
    image = codec.tokens_to_images(tokens)
    patch = image[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)  # (py, px, c), channel fastest
    assert torch.equal(patch, codec.codebook[tokens[0, 1]])
    assert torch.equal(codec.images_to_tokens(image), tokens)


def test_token_accuracy_is_perfect_at_t1_and_falls_with_noise():
    codec = TextPixelCodec(64, 4)
    texts = [random_unicode(random.Random(i), 40) for i in range(16)]
    tokens = torch.tensor([codec.tokenize(t) for t in texts])
    x = codec.encode(texts) * 2 - 1
    flow = FlowMatching()
    noise = flow.sample_noise(x, torch.Generator().manual_seed(0))
    accuracies = []
    for t in (1.0, 0.75, 0.5, 0.25, 0.1):
        z = flow.add_noise(x, noise, torch.full((16,), t))
        predicted = codec.images_to_tokens((z.clamp(-1, 1) + 1) / 2)
        accuracies.append(token_accuracy(predicted, tokens, codec.pad_id).item())
    assert accuracies[0] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(accuracies)) and accuracies[-1] < 0.5
    assert sequence_accuracy(tokens, tokens, codec.pad_id).item() == 1.0


def test_bits_codewords_beat_flat_colours_under_noise():
    texts = [random_unicode(random.Random(i), 40) for i in range(8)]
    results = {}
    for scheme in ("bits", "flat"):
        codec = TextPixelCodec(64, 4, scheme=scheme)
        tokens = torch.tensor([codec.tokenize(t) for t in texts])
        x = codec.encode(texts)
        noisy = x + 0.4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        results[scheme] = token_accuracy(codec.images_to_tokens(noisy), tokens, codec.pad_id).item()
    assert results["bits"] > 0.97 and results["flat"] < 0.8, results


def test_metrics_ignore_padding_and_need_every_position():
    target = torch.tensor([[1, 2, 9, 9], [3, 4, 5, 9]])
    predicted = torch.tensor([[1, 2, 0, 0], [3, 0, 5, 9]])
    assert token_accuracy(predicted, target, pad_id=9).item() == pytest.approx(4 / 5)
    assert sequence_accuracy(predicted, target, pad_id=9).item() == 0.5


def test_hf_tokenizer_option():
    class WordTokenizer:  # a minimal lossless tokenizer with the transformers interface the codec uses
        vocab = ("a", "b", " ")

        def __len__(self):
            return len(self.vocab)

        def encode(self, text, add_special_tokens=False):
            return [self.vocab.index(ch) for ch in text]

        def decode(self, ids):
            return "".join(self.vocab[i] for i in ids)

    codec = TextPixelCodec(16, 4, tokenizer=WordTokenizer())
    assert codec.vocab_size == 5 and codec.decode(codec.encode(["ab ba", ""])) == ["ab ba", ""]
    with pytest.raises(ValueError, match="scheme"):
        TextPixelCodec(scheme="rainbow")
