"""The permission list (照会許可用照合リスト): what may flow, built from the law.

Owns the dataset converted from 番号法 別表第二 (and, from 2024-05-27, 第19条第8号 and its
order), its loader, the O(1) deny-by-default checker, and the conformance kit. The network checks
it before issuing a permit; every provider checks its own copy again before answering.

Must never: allow by default, guess a legal basis it cannot verify, or depend on any server.
"""
