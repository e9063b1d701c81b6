-- Many accounts in one run (issue 23). A row's account is the name of an account of
-- the accounts file (`--accounts`) or of the Organization (`--organization`); NULL is
-- the run's own account: `runs.options.account` (`--account`), else the base
-- credentials. Every run planned before this version has NULL everywhere, and is the
-- one-account run it was.
--
-- A job's requests are signed as its account, and every job that follows it (its
-- unbinds, verification, a split's children, a live run's stop and start) inherits it.
-- Claims need no account: instance ids are unique across accounts.
-- (Version 0011 is not used: it was set aside for this change and never shipped.)
ALTER TABLE items ADD COLUMN account TEXT;
ALTER TABLE jobs ADD COLUMN account TEXT;
ALTER TABLE power ADD COLUMN account TEXT;
ALTER TABLE template_changes ADD COLUMN account TEXT;
ALTER TABLE retirements ADD COLUMN account TEXT;
