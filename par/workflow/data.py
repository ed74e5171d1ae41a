"""`workflow/rules/data.smk` (stage 1): the arguments of the image rules: tinyset or own images, the FID reference
and the floors' images, the VQ tokenizer, tokenization, downloads and the classifier."""

from __future__ import annotations

import os

from par.config import ClassifierSettings, SplitSettings, TinysetSettings, TokenizeSettings, VQTrainSettings, flags
from par.errors import UserError
from par.workflow.preset import Preset, file_name, quoted


class DataArgs(Preset):
    """Images → VQ tokenizer → ten-crop token shards (+ the FID reference set)."""

    @property
    def uses_tinyset(self) -> bool:
        return self.preset.data.source == "tinyset"

    def tinyset_args(self) -> str:
        return quoted(flags(TinysetSettings, self._section("data").get("tinyset") or {}))

    def reference_tinyset_args(self) -> str:
        """The tinyset flags with the reference seed: a second, disjoint draw (held-out real images for FID)."""
        tinyset = self._section("data").get("tinyset") or {}
        return quoted(flags(TinysetSettings, tinyset, {"seed": self.preset.data.reference_seed}))

    def images_marker(self) -> str:
        """The file that marks the preset's image splits complete (`par prepare-images` / `par make-tinyset`)."""
        return f"{self.results}/images/{'tinyset' if self.uses_tinyset else 'images'}.json"

    def heldout_marker(self) -> str:
        """The marker of the held-out split: the reference tinyset draw, or the same `prepare-images` tree."""
        return f"{self.results}/reference_images/tinyset.json" if self.uses_tinyset else self.images_marker()

    def prepare_images_args(self) -> str:
        return quoted(["--source", self.preset.data.source] + flags(SplitSettings, self._section("data")))

    def image_folder(self, wildcards, input) -> str:  # noqa: A002 — a Snakemake params function
        """The training images: the generated tinyset, or the `train/` split of `par prepare-images`."""
        folder = os.path.dirname(input.images)
        return folder if self.uses_tinyset else f"{folder}/train"

    def heldout_folder(self, wildcards, input) -> str:  # noqa: A002 — a Snakemake params function
        """The held-out images (never trained on): the reference tinyset, or the `test/` split."""
        folder = os.path.dirname(input.heldout)
        return folder if self.uses_tinyset else f"{folder}/test"

    def reference_args(self) -> str:
        """`par make-reference`: held-out real images at the evaluation size (the first draw of the split)."""
        return quoted(["--size", self.preset.sample.image_size, "--max-images", self.preset.data.reference_images])

    def floor_args(self, floor: str) -> str:
        """`par make-reference` for a floor: the held-out images after the reference's, disjoint from it."""
        data = self.preset.data
        args = ["--size", self.preset.sample.image_size, "--offset", data.reference_images,
                "--max-images", data.floor_images]
        return quoted(args + (["--vq-size", self.preset.tokenize.image_size] if floor == "recon" else []))

    def vq_train_args(self) -> str:
        return quoted(flags(VQTrainSettings, self._section("tokenizer").get("train") or {}))

    def tokenize_args(self) -> str:
        return quoted(flags(TokenizeSettings, self._section("tokenize")))

    @property
    def tokenize_slots(self) -> list[int]:
        """The parallel tokenization jobs (`tokenize.array_tasks`); empty for one job, which writes the manifest."""
        k = self.preset.tokenize.array_tasks
        return list(range(k)) if k > 1 else []

    def download_source(self, file: str) -> tuple[str, str]:
        """(url, sha256) of the released file stored as `<results>/downloads/<file>`."""
        tok, data = self.preset.tokenizer, self.preset.data
        models = [(e.checkpoint_url, e.checkpoint_sha256) for e in self.preset.models.values()]
        for url, sha in ((tok.url, tok.sha256), (data.reference_stats_url, data.reference_stats_sha256), *models):
            if url and file_name(url) == file:
                return url, sha
        raise UserError(f"no download configured for {file} in preset {self.preset_name}")

    def fetch_args(self, file: str) -> str:
        url, sha = self.download_source(file)
        return quoted(["--url", url, "--sha256", sha] + ["--allow-unpinned"] * self.settings.allow_unpinned)

    def classifier_args(self) -> str:
        return quoted(flags(ClassifierSettings, self._section("classifier")))
