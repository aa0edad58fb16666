print("not a notebook")
