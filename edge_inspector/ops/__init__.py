"""Operations: the HTTP side (/metrics, /healthz, /readyz, /preview.jpg) and the ``bench`` command."""
