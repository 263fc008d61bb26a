"""The unified address server (統合利用番号連携サーバー), one per organization.

Owns the individual numbers (個人番号) of the organization's people, encrypted at rest, and the
name matching (名寄せ) that links each business system's address number (宛名番号) to one
unified number (団体内統合宛名番号). It is the only door through which business systems
(既存システム) reach the intermediate server, and it asks for linkage codes (符号要求) through
the processing-serial flow.

Must never: send an individual number to the intermediate server or the network, log one, or let
a business system act outside its scope (its data items and procedures).
"""
