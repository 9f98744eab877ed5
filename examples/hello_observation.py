"""A small observing script to try oetd with.

oetctl procedure create file://$PWD/examples/hello_observation.py --subarray_id=1 --wait
oetctl procedure start --listen 'NGC 253' --scans=3
"""

import time

try:
    from pubsub import pub
except ImportError:  # pypubsub is optional: without it, events are simply not sent
    pub = None

SUBARRAY = None


def announce(message):
    print(message)
    if pub is not None:
        pub.sendMessage("user.script.announce", msg_src="hello_observation", msg=message)


def init(subarray_id):
    """Called once when the procedure is created."""
    global SUBARRAY
    SUBARRAY = subarray_id
    announce(f"subarray {subarray_id} allocated")


def main(target="Polaris Australis", scans=2, scan_seconds=0.5):
    """Called by `oetctl procedure start`."""
    try:
        for scan in range(1, scans + 1):
            announce(f"subarray {SUBARRAY}: scan {scan}/{scans} on {target}")
            time.sleep(scan_seconds)
        announce(f"subarray {SUBARRAY}: observation of {target} complete")
    finally:
        # Runs on a normal end and when an operator stops the procedure.
        print("releasing resources")
