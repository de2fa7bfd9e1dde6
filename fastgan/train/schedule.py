"""Progressive growing's schedule (Karras et al. 2017, section 3), counted in images shown.

Phase 0 trains 4x4 for `kimg_per_phase` thousand images. Each later phase doubles the resolution:
a fade-in of `kimg_per_phase` (alpha from 0 to 1, linear in images) and then a stabilization of
`kimg_per_phase` (alpha 1). The run ends with the last stabilization.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
    """Where a run is: `phase` (0 = 4x4), its `resolution`, the fade-in `alpha`, and `fading`."""

    phase: int
    resolution: int
    alpha: float
    fading: bool


class Schedule:
    """Phases from 4x4 to `resolution`, each `kimg_per_phase` * 1000 images per segment."""

    def __init__(self, resolution: int, kimg_per_phase: float):
        self.resolutions = [4]
        while self.resolutions[-1] < resolution:
            self.resolutions.append(self.resolutions[-1] * 2)
        self.segment_images = kimg_per_phase * 1000.0
        self.total_images = self.segment_images * (2 * len(self.resolutions) - 1)

    def phase_end(self, phase: int) -> float:
        """Images shown when `phase` ends."""
        return self.segment_images * (2 * phase + 1)

    def at(self, images: int) -> Stage:
        """The stage of the step that starts after `images` images.

        Args:
            images: images shown so far (>= 0).
        Returns:
            Stage.
        """
        segment = min(int(images // self.segment_images), 2 * len(self.resolutions) - 2)
        phase = (segment + 1) // 2
        fading = segment % 2 == 1
        alpha = 1.0
        if fading:
            alpha = min(1.0, (images - segment * self.segment_images) / self.segment_images)
        return Stage(phase, self.resolutions[phase], alpha, fading)
