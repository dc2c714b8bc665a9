"""VIM drivers: where SFEs actually run (`process` on this machine, `kubernetes` distributed)."""
