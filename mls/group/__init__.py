"""The group engine (RFC 9420 §11, §12): a member's state, proposals, commits, Welcome, joins, external
joins and senders, reinit and branching.

:class:`~mls.group.group.Group` is the front door; each operation lives in a module named after it —
:mod:`~mls.group.creation`, :mod:`~mls.group.join`, :mod:`~mls.group.external_join`,
:mod:`~mls.group.application`, :mod:`~mls.group.proposing`, :mod:`~mls.group.create_commit`,
:mod:`~mls.group.process` with :mod:`~mls.group.receive_commit`, :mod:`~mls.group.merge`,
:mod:`~mls.group.reinit` — over the shared :class:`~mls.group.core.GroupCore`. Values:
:mod:`~mls.group.state` (GroupState), :mod:`~mls.group.staged_commit` (StagedCommit),
:mod:`~mls.group.results`, :mod:`~mls.group.commit_options`, :mod:`~mls.group.handshake_framing`."""
