"""`workflow/rules/entropy.smk` (§8) and `workflow/rules/report.smk` (stage 5): the arguments of `par entropy`,
and the floors the tables list beside the runs."""

from __future__ import annotations

from par.workflow.preset import Preset, quoted


class AnalysisArgs(Preset):
    """The entropy maps and increase of §8, and what the tables and report read."""

    def entropy_references(self) -> list[str]:
        """The reference cells of the maps as file-name parts, `row_col`."""
        return [f"{r}_{c}" for r, c in self.preset.entropy.references]

    def entropy_features_args(self) -> str:
        return quoted(["--num-images", self.preset.entropy.num_images])

    def _estimator(self) -> list:
        e = self.preset.entropy
        return ["--estimator", e.estimator, "--alpha", e.alpha]

    def entropy_map_args(self, reference: str) -> str:
        return quoted(["--reference", reference.replace("_", ","), *self._estimator()])

    def entropy_increase_args(self) -> str:
        return quoted(["--n", self.preset.entropy.n, *self._estimator()])

    @property
    def floors(self) -> list[str]:
        """The floors measured beside every table: held-out real images (real vs real), and the same images
        through the VQ tokenizer (reconstruction). Empty when `data.floor_images` is 0 or FID uses statistics."""
        return ["real", "recon"] if self.preset.data.floor_images and not self.reference_stats() else []

    @property
    def video_floors(self) -> list[str]:
        """Table 4's floors: held-out real clips, and the same through the video tokenizer (rFVD)."""
        return ["real", "recon"] if self.has_video and self.preset.video.fvd.floor_clips else []
