class UserError(Exception):
    """Bad input. `par` prints it as one line (naming the file/field and the fix) and exits with status 2."""
