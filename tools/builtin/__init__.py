"""The tools Corral ships. Retrieval, imaging and adapters add theirs in their own packages."""

from .calculator import calculator
from .clock import current_time

BUILTIN_TOOLS = [calculator, current_time]
