"""``scripts/faults``: the fault-injection suite, against real processes (see ``run.py``).

    .venv/bin/python -m scripts.faults [--quick] [--only CASE ...] [--long] [--json out.json]

Real ``synthdetect worker`` processes, a real SeaweedFS, a private RabbitMQ node
(the machine's own node is never stopped) and a real HTTP callback receiver.
``cases.py`` lists the cases, ``checks.py`` what every case asserts.
"""
