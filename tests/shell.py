"""Shell text for test jobs."""


def wait_for_file(path: str, limit_s: int = 120) -> str:
    """A shell loop that waits until ``path`` exists, and exits 9 after ``limit_s``.

    Bounded, so that a job left behind by a test that was killed (its worker gone with it) ends by itself.
    ``path`` is put in as it is: quote it (or pass a variable like ``"$D/go"``).
    """
    return f"i=0; until [ -e {path} ]; do i=$((i+1)); [ $i -lt {limit_s * 10} ] || exit 9; sleep 0.1; done"
