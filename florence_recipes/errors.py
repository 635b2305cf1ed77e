"""The one exception type for problems the user can fix: reported as one line, never a traceback."""


class RecipeError(ValueError):
    """A bad option, dataset, path or environment, with a message that names it."""
