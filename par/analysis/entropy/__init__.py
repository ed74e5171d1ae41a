"""§8 conditional-entropy analysis (Figs. 9 and 11): how much uncertainty about a token is left given the tokens
that a generation order lets it condition on. One file per step, in the order `workflow/rules/entropy.smk` runs them:

    features.py   codes → token features (L2-normalised VQ codebook rows); codes via `par.data.shards`
    estimate.py   the Gaussian upper bound H(v_k | cond) ≤ ½·log((2πe)^d·|Σ_ε|) of held-out residuals
    maps.py       Fig. 9: H(v_i | v_ref) maps with their baseline; Fig. 11: the entropy increase of an order
    summary.py    delta-method intervals and the verdicts on the paper's claims (`par.analysis.verdicts`)
    figures.py    the two heatmap figures
    cli.py        `par entropy features | map | increase | figures`
"""

from par.analysis.entropy.cli import _cmd_features, _cmd_figures, _cmd_increase, _cmd_map, register
from par.analysis.entropy.estimate import (
    DEFAULT_ALPHA, ESTIMATORS, _ridge_residuals, conditional_entropy, gaussian_entropy,
    gaussian_entropy_with_influence,
)
from par.analysis.entropy.features import CODEBOOK_KEY, _read_codebook, token_features
from par.analysis.entropy.maps import conditioning_maps, entropy_increase, entropy_map
from par.analysis.entropy.summary import (
    CLAIM_NEAR, CLAIM_ORDER, SUMMARY_NAME, _neighbour_cells, entropy_summary, verdict,
)
from par.data.shards import read_crop_codes as _read_codes  # this package's reader before it moved to shards

__all__ = [
    "CLAIM_NEAR", "CLAIM_ORDER", "CODEBOOK_KEY", "DEFAULT_ALPHA", "ESTIMATORS", "SUMMARY_NAME", "_cmd_features",
    "_cmd_figures", "_cmd_increase", "_cmd_map", "_neighbour_cells", "_read_codebook", "_read_codes",
    "_ridge_residuals", "conditional_entropy", "conditioning_maps", "entropy_increase", "entropy_map",
    "entropy_summary", "gaussian_entropy", "gaussian_entropy_with_influence", "register", "token_features", "verdict",
]
