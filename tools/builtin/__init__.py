"""The tools Corral ships. Retrieval, imaging and adapters add theirs in their own packages."""

from .calculator import calculator
from .clock import current_time
from .images import edit_image, generate_image
from .search_documents import search_documents
from .training import TRAINING_TOOLS

BUILTIN_TOOLS = [calculator, current_time, search_documents, generate_image, edit_image, *TRAINING_TOOLS]
