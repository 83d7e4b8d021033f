"""vidworld's shared runtime: command line, configs, progress, atomic files, Ray and training runtime.

The stages live in the top-level packages ``pipeline``, ``tokenizer`` and ``dynamics``; this
package holds only what every stage shares.
"""

__version__ = "0.1.0"
