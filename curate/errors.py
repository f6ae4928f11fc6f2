"""The one base of the errors a user can fix."""


class UserError(Exception):
    """A mistake the user can fix (a bad key, a path that is not what a verb needs, an OUT that
    another run holds): every CLI verb prints its message as one line and exits 2, no traceback."""
