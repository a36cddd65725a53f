"""Every folder a quickstart publishes (each folder with a `model.safetensors`, outside `checkpoint-N`) has a model
card that `huggingface_hub.ModelCard.load` parses, with `library_name` and tags, and whose usage snippet runs."""

from __future__ import annotations

import os
import re

import pytest
from huggingface_hub import ModelCard
from quickstarts import QUICKSTARTS, published_files, quickstart_output

from rae_hf.hub import hub_id, model_card, write_model_card

PIPELINE_TAGS = {"probe": "image-classification", "probe_lora": "image-classification",
                 "prune": "image-classification", "dino": "image-feature-extraction"}  # fmt: skip


def usage_snippet(card: str) -> str:
    (code,) = re.findall(r"^## Usage\n\n```python\n(.*?)^```", card, flags=re.MULTILINE | re.DOTALL)
    return code


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICKSTARTS))
def test_every_published_folder_has_a_card_that_parses_and_runs(tmp_path_factory, name):
    output = quickstart_output(name, tmp_path_factory)
    folders = sorted({path.parent for path in published_files(output) if path.name == "model.safetensors"})
    assert folders
    for folder in folders:
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers", folder
        assert "rae_hf" in card.data.tags and len(card.data.tags) >= 3, folder
        assert card.data.pipeline_tag == PIPELINE_TAGS.get(name), folder
        assert "## Metrics" in card.text and "## Training recipe" in card.text, folder
        previous = os.getcwd()
        os.chdir(output.parents[2])  # the snippet names the folder as the run did (runs/quickstart/...)
        try:
            exec(compile(usage_snippet(card.content), f"{folder}/README.md", "exec"), {})
        finally:
            os.chdir(previous)


def test_card_metadata_fields_and_license(tmp_path):
    card = model_card(
        "Title", "Summary.", ["x = 1"], ["probe"], parts=[("input", "32 x 32")], settings=[("learning_rate", 0.001)],
        metrics={"eval_top1": 0.5, "total_flos": 0.0}, dataset="ILSVRC/imagenet-1k", base_model=str(tmp_path),
        pipeline_tag="image-classification",
    )  # fmt: skip
    write_model_card(str(tmp_path), card, license="apache-2.0")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.tags == ["rae_hf", "probe"] and loaded.data.datasets == ["ILSVRC/imagenet-1k"]
    assert loaded.data.license == "apache-2.0" and loaded.data.base_model is None  # a local folder is no Hub id
    assert "| eval_top1 | 0.5 |" in loaded.text and "total_flos" not in loaded.text
    assert usage_snippet(loaded.content) == "x = 1\n"
    assert hub_id("facebook/dinov2-base") == "facebook/dinov2-base" and hub_id("runs/quickstart/a/b") is None
