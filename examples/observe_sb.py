"""An activity script: what `oetctl activity run observe sbd-example-00001` runs.

oetd calls init() with the SBD's init arguments, then main() with the SBD's main
arguments plus two of its own: `sb_json`, the path of a file holding the Scheduling
Block Definition, and `sbi_id`, the Scheduling Block Instance the ODA recorded for
this run. See examples/observing_sbd.json for the SBD.
"""

import json
import time

try:
    from pubsub import pub
except ImportError:  # pypubsub is optional: without it, events are simply not sent
    pub = None

SUBARRAY = None


def announce(message):
    print(message)
    if pub is not None:
        pub.sendMessage("user.script.announce", msg_src="observe_sb", msg=message)


def init(subarray_id):
    global SUBARRAY
    SUBARRAY = subarray_id
    announce(f"subarray {subarray_id} allocated")


def main(sb_json, sbi_id, scan_seconds=0.2):
    with open(sb_json, encoding="utf-8") as file:
        sbd = json.load(file)
    scans = {scan["scan_definition_id"]: scan for scan in sbd.get("scan_definitions", [])}
    sequence = sbd.get("scan_sequence", [])
    announce(f"{sbi_id}: observing {sbd.get('sbd_id')} on subarray {SUBARRAY}")
    try:
        for number, name in enumerate(sequence, start=1):
            target = scans.get(name, {}).get("target_ref", "?")
            announce(f"{sbi_id}: scan {number}/{len(sequence)} '{name}' on {target}")
            time.sleep(scan_seconds)
        announce(f"{sbi_id}: complete")
    finally:
        # Runs on a normal end and when an operator stops the activity's procedure.
        print("releasing resources")
