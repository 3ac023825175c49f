"""Artifact folders: one manifest class per kind (written and read by the same class) and the opened artifact.

`base` (what every manifest class shares), `graphs` (what trunk and engine folders share), `trunk`,
`engine`, `adapter`, `cache` (one contract per kind), `opened` (an artifact folder running on a backend).
"""
