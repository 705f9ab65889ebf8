# index-filter.awk: drops from cweave's index (iawlb.idx) the entries that
# help no reader: identifiers of one letter (loop counters, a socket address
# called a, a string s) and the namespace std, which is on nearly every page.
# An entry that does not fit on one line goes on after a line ending in %.
BEGIN { skipping = 0 }
{
  if (!skipping && ($0 ~ /^\\I(\\\||\\&|\\\\)\{[A-Za-z]\}, / || $0 ~ /^\\I\\&\{std\}, /))
    skipping = 1
  if (!skipping) print
  if (skipping && $0 !~ /%$/) skipping = 0
}
