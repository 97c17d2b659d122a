async def secrets_part(world, *a):
    return []
