"""OVF store benchmarks: the daemon receiving a store, and an engine pass.

Run as ``python -m bench.ovf`` (``--quick`` for CI).  Two parts, each
against a real ``sluice serve`` started on 127.0.0.1, each compared with
the image-upload path of the same daemon and the same bytes:

- ``store``: one PUT of an OVF tar of N OVFs of 20 KiB (issue "OVF stores");
- ``engine``: one ``sluice-engine ovf update --once`` pass over N VMs on 4
  domains, in a child process whose peak RSS is measured (issue "Engine side").

bench/README.md says what is measured and how to read the report.
"""

#: The issues' OVF size.
OVF_SIZE = 20 << 10
