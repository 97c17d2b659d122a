async def hostile_part(world, *a):
    return []
