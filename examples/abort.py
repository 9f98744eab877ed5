"""An abort script: what `oetctl procedure stop --run-abort` runs after stopping.

Configure it with `procedures.abort_script = "file:///path/to/abort.py"`. oetd calls
init(subarray_id=...) with the stopped procedure's subarray, then main().
"""

SUBARRAY = None


def init(subarray_id):
    global SUBARRAY
    SUBARRAY = subarray_id


def main():
    # A real abort script would command the subarray to abort and go to a safe state.
    print(f"aborting subarray {SUBARRAY}")
