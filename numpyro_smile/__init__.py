"""numpyro-smile: microcanonical Langevin samplers (MCLMC, MILE, SMILE) for NumPyro models."""

from numpyro_smile._version import __version__ as __version__
from numpyro_smile.config import SMILEConfig
from numpyro_smile.convergence import ConvergenceWarning
from numpyro_smile.diagnostics import ResetWarning, check_resets
from numpyro_smile.ensemble import SMILEEnsemble
from numpyro_smile.evaluation import evaluate, predict
from numpyro_smile.kernel import SMILE, SMILEState
from numpyro_smile.model_views import FullBatchWarning, ModelError
from numpyro_smile.schedules import ConstantSchedule, CyclicalSchedule, PolynomialDecay, cyclical
from numpyro_smile.sg_kernels import SGHMC, SGLD, AdaSGHMC, SGState
from numpyro_smile.step_size_selection import GridWarning, select_step_size
from numpyro_smile.targets import NonSmoothWarning, StartWarning

__all__ = [
    "SGHMC",
    "SGLD",
    "SMILE",
    "AdaSGHMC",
    "ConstantSchedule",
    "ConvergenceWarning",
    "CyclicalSchedule",
    "FullBatchWarning",
    "GridWarning",
    "ModelError",
    "NonSmoothWarning",
    "PolynomialDecay",
    "ResetWarning",
    "SGState",
    "SMILEConfig",
    "SMILEEnsemble",
    "SMILEState",
    "StartWarning",
    "check_resets",
    "cyclical",
    "evaluate",
    "predict",
    "select_step_size",
]
