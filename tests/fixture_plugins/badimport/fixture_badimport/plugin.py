raise ImportError("fixture: this plugin's native library is missing")
