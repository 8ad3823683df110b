"""The group engine (RFC 9420 §11, §12): a member's state, proposals, commits, Welcome, joins, external
joins and senders, reinit and branching."""
