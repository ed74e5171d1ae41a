"""`workflow/rules/video.smk` (Table 4): the arguments of the video rules: clips, the video tokenizer, its tokens,
and FVD (its reference statistics, the floors' clips, each video run's score)."""

from __future__ import annotations

from par.config import VideoSettings, VideoTokenizeSettings, VideoVQTrainSettings, flags
from par.workflow.preset import Preset, quoted


class VideoArgs(Preset):
    """Clips → video tokenizer → token shards → FVD. Training, sampling and NLL of a video run are the image
    rules' (train.py, evaluate.py), on the tokens and tokenizer `Preset` gives a video run."""

    def _video(self, *keys) -> dict:
        d = self._section("video")
        for k in keys:
            d = d.get(k) or {}
        return d

    def prepare_video_args(self, split: str) -> str:
        """`par prepare-video`: the clip settings; the held-out split has its own count (`heldout_videos`)."""
        clips = self._video("clips")
        heldout = {"num_videos": self.preset.video.heldout_videos} if split == "test" else {}
        return quoted(["--split", split] + flags(VideoSettings, clips, heldout))

    @property
    def video_slots(self) -> list[int]:
        """Parallel clip-making and tokenization jobs (`video.array_tasks`); empty for one job."""
        k = self.preset.video.array_tasks
        return list(range(k)) if k > 1 else []

    def video_vq_train_args(self) -> str:
        """`par train-video-vq`: its settings, trained on clips of the preset's length unless it sets `frames`."""
        return quoted(flags(VideoVQTrainSettings, {"frames": self.preset.video.clips.frames},
                            self._video("tokenizer", "train")))

    def video_tokenize_args(self) -> str:
        return quoted(flags(VideoTokenizeSettings, self._video("tokenize")))

    def fvd_args(self) -> str:
        f = self.preset.video.fvd
        return quoted(["--frames", f.frames, "--batch-size", f.batch_size, "--bootstrap", f.bootstrap,
                       "--device", f.device])

    def fvd_stats_args(self) -> str:
        f = self.preset.video.fvd
        return quoted(["--max-clips", f.reference_clips, "--frames", f.frames, "--batch-size", f.batch_size,
                       "--device", f.device])

    def video_floor_args(self) -> str:
        return quoted(["--max-clips", self.preset.video.fvd.floor_clips])
