"""The one exception type for problems the user can fix: reported as one line, never a traceback."""


class RecipeError(ValueError):
    """A bad option, dataset, path or environment, with a message that names it."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type name if it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
