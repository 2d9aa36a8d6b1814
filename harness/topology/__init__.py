"""The two-HCA topology: rxe0 (local HCA) <-> veth -- switch -- veth <-> rxe1 (peer's HCA).

Two rxe devices on one kernel only talk when policy routing forces their traffic
onto the wire (otherwise the kernel short-cuts local addresses through `lo`
and rxe drops what arrives on a netdev without an rxe device). What `up` builds:

    rxpw0 198.18.0.1/32 ==veth== rxpw0s -[bridge rxpwsw]- rxpw1s ==veth== rxpw1 198.18.0.2/32
    rxe0 on rxpw0                                                         rxe1 on rxpw1
    rules: pref 1 iif rxpw0 lookup local      pref 2 iif rxpw1 lookup local
           pref 3 from A lookup 18770         pref 4 to B lookup 18770   (B via rxpw0)
           pref 5 from B lookup 18771         pref 6 to A lookup 18771   (A via rxpw1)
           the system's `pref 0 lookup local` moved to pref 10 (restored on teardown)
    sysctls on our veths: accept_local=1 rp_filter=0; all.rp_filter=0 if it was not
    receive packet steering on both ends of each veth (a flow on one CPU, in order)

The bridge is the switch between the two hosts: with a plain veth pair, taking
the local end down also drops the peer's carrier (measured: rxe1 went DOWN), and
destroying the local netdev would destroy the peer's too. Through the switch, the
local side can flap, or be destroyed and re-created (hibernate), while rxe1 stays
ACTIVE, as a remote host's HCA would.

Everything created is written to a state file *before* it is created, so a run
killed at any point leaves a record that `down` uses to remove exactly what we
made. Nothing that is not in the state file is deleted or changed; a name
clash with a foreign object is refused with an error naming it.

The modules, lowest first:

    config.py        TopologyConfig, Side, Endpoint, Topology; the rule priorities and tables
    devices.py       the RDMA devices: discover, port states, uverbs, add, bounded delete
    netdevs.py       one host's veth side: create, link up with its route, destroy
    neighbour.py     the ARP entry for the far address, resolved before the first connect
    lifecycle.py     setup, restore_local_side, teardown (only what the state file records)
    pingpong.py      the ibv_rc_pingpong traffic check
    cleanup.py       `rxe-power cleanup`: what a killed run left
    command_line.py  `python -m harness.topology up|down|show|verify` (ci/rxe-setup.sh)

Standard library only: ci/rxe-setup.sh runs this with the system python3.
"""
