"""MLS messages on the wire (RFC 9420 §2.1, §6, §10, §12): the codec, framing and message protection,
proposals, extensions, KeyPackages, GroupContext, GroupInfo, Commit and Welcome."""
